//! Fuzzes the packet-reading path: `codec::connect_version`, then `codec::read` fed the way
//! `edge::connection` feeds it (bytes appended to a `BytesMut`, read until `Ok(None)` or an
//! error), both with the whole input at once and in chunks whose sizes derive from the input;
//! every packet that decodes is written back with `codec::write` for both versions.
//!
//! Input layout: byte 0 is a control byte, the rest is the byte stream from the client.
//! - bits 0..=1: 0 → 3.1.1 only, 1 → 5.0 only, 2 or 3 → both
//! - bits 2..=3: the maximum packet size (16, 1 KiB, 1 MiB as configured, 268_435_460)
//! - bits 4..=7: mixed into the seed of the chunk sizes
//!
//! By default the only property checked is "never panics". With `--features strict` the
//! framing invariants are asserted too:
//! - `read` returning `Ok(None)` has consumed nothing (the caller waits for more bytes and must
//!   then see the same packet again);
//! - chunked input decodes to the same packets, and ends the same way, as the whole input;
//! - once `connect_version` has decided on a prefix, the whole input gives the same answer.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use natter::codec::{self, CodecError, Version};
use rumqttc::v5::mqttbytes::v5::Packet;

const STRICT: bool = cfg!(feature = "strict");
const MAX_SIZES: [u32; 4] = [16, 1024, 1_048_576, 268_435_460];

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let _ = codec::connect_version(data);
    let whole_version = codec::connect_version(stream);

    let versions: &[Version] = match ctl & 0b11 {
        0 => &[Version::V4],
        1 => &[Version::V5],
        _ => &[Version::V4, Version::V5],
    };
    let max_size = MAX_SIZES[usize::from((ctl >> 2) & 0b11)];
    let seed = fnv1a(data) ^ u64::from(ctl >> 4);

    for &version in versions {
        let whole = decode_whole(version, stream, max_size);
        let chunked = decode_chunked(version, stream, max_size, seed, &whole_version);
        if STRICT {
            assert_eq!(
                whole, chunked,
                "whole vs chunked, {version:?}, max {max_size}"
            );
        }
    }
});

/// How a stream ended and what it decoded to.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<Packet>,
    /// `None`: the codec wants more bytes, with this many left over. `Some`: it failed.
    error: Option<String>,
    left: usize,
}

fn decode_whole(version: Version, stream: &[u8], max_size: u32) -> Outcome {
    let mut buf = BytesMut::from(stream);
    let mut packets = Vec::new();
    let error = drain(version, &mut buf, max_size, &mut packets).err();
    Outcome {
        left: if error.is_some() { 0 } else { buf.len() },
        packets,
        error,
    }
}

/// Appends the stream a chunk at a time, as socket reads would, emulating `accept` (version
/// detection first) and then `handle_buffered` after every chunk.
fn decode_chunked(
    version: Version,
    stream: &[u8],
    max_size: u32,
    seed: u64,
    whole_version: &Result<Option<Version>, CodecError>,
) -> Outcome {
    let mut rng = XorShift(seed | 1);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut version_decided = false;
    let mut rest = stream;
    while !rest.is_empty() {
        let n = rng.chunk_len().min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if !version_decided {
            let found = codec::connect_version(&buf);
            if !matches!(found, Ok(None)) {
                version_decided = true;
                if STRICT {
                    assert_eq!(
                        describe(&found),
                        describe(whole_version),
                        "connect_version on a prefix of {} bytes",
                        buf.len()
                    );
                }
            }
        }
        if let Err(error) = drain(version, &mut buf, max_size, &mut packets) {
            return Outcome {
                packets,
                error: Some(error),
                left: 0,
            };
        }
    }
    Outcome {
        packets,
        error: None,
        left: buf.len(),
    }
}

/// Reads until `Ok(None)` (then `Ok`) or an error (then `Err`, where the connection closes).
fn drain(
    version: Version,
    buf: &mut BytesMut,
    max_size: u32,
    packets: &mut Vec<Packet>,
) -> Result<(), String> {
    loop {
        let before = buf.len();
        match codec::read(version, buf, max_size) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a packet decoded from no bytes");
                reencode(&packet);
                packets.push(packet);
            }
            Ok(None) => {
                if STRICT {
                    assert_eq!(
                        buf.len(),
                        before,
                        "Ok(None) consumed {} of {before} bytes ({version:?}, max {max_size})",
                        before - buf.len()
                    );
                }
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn reencode(packet: &Packet) {
    for version in [Version::V4, Version::V5] {
        let mut out = BytesMut::new();
        let _ = codec::write(version, packet, &mut out);
    }
}

fn describe(r: &Result<Option<Version>, CodecError>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("error: {e}"),
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Mostly tiny chunks (every header boundary gets split), sometimes large ones.
    fn chunk_len(&mut self) -> usize {
        let r = self.next();
        let k = (r >> 8) as usize;
        match r % 8 {
            0..=2 => 1,
            3..=5 => 1 + k % 8,
            6 => 1 + k % 64,
            _ => 1 + k % 1024,
        }
    }
}
