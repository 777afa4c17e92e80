//! The real Eclipse Mosquitto command-line clients (`mosquitto_pub`, `mosquitto_sub`,
//! `mosquitto_rr` from Debian's `mosquitto-clients` package) driven by tests.
//!
//! Command lines are written as a user would type them (split on spaces, `'...'` quotes one
//! argument); `-h 127.0.0.1 -p PORT` is added. Background subscribers run with `-d`
//! (libmosquitto's debug lines) under `stdbuf -oL`, so their stdout arrives line by line and a
//! test waits for the `Subscribed (mid: ...)` line instead of sleeping. Subscribers get a `-W`
//! timeout and every process a hard deadline, so nothing hangs.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest any client process may run before the test kills it and fails.
const PROCESS_LIMIT: Duration = Duration::from_secs(20);
/// How long a test waits for a line from a background client.
const LINE_WAIT: Duration = Duration::from_secs(10);
/// `-W` given to background subscribers, so they exit on their own if a test goes wrong.
const SUB_TIMEOUT_SECS: &str = "15";
/// mosquitto_sub's exit status when its `-W` timeout expires.
pub const TIMED_OUT: i32 = 27;

/// Finds a program on PATH, or fails the test saying how to install it.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    if name == "stdbuf" {
        panic!("`stdbuf` not found on PATH: these tests need it (Debian package `coreutils`)");
    }
    panic!(
        "`{name}` not found on PATH: these tests drive the real mosquitto command-line clients; \
         install them with `apt-get install mosquitto-clients`"
    );
}

/// Splits a command line on spaces; `'...'` makes one argument of what it encloses.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            ' ' if !quoted => out.extend(word.take()),
            _ => word.get_or_insert_with(String::new).push(ch),
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    out.extend(word);
    out
}

/// `name -h 127.0.0.1 -p PORT args...`, optionally under `stdbuf -oL`.
fn client_command(name: &str, port: u16, args: &[String], line_buffered: bool) -> Command {
    let mut cmd = if line_buffered {
        let mut c = Command::new(program("stdbuf"));
        c.arg("-oL").arg(program(name));
        c
    } else {
        Command::new(program(name))
    };
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` to exit; kills it and returns `None` past the deadline.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<i32> {
    loop {
        match child.try_wait().expect("wait for client") {
            Some(status) => return Some(status.code().unwrap_or(-1)),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// What a finished client printed.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout without libmosquitto's `-d` debug lines: the messages as printed.
    pub fn messages(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| !is_debug(l)).collect()
    }

    /// Whether some stdout line ends with `suffix` (debug lines start with the client id).
    pub fn has_line_ending(&self, suffix: &str) -> bool {
        self.stdout.lines().any(|l| l.ends_with(suffix))
    }
}

fn is_debug(line: &str) -> bool {
    line.starts_with("Client ") || line.starts_with("Subscribed (mid: ")
}

/// Runs a client to completion.
pub fn run(name: &str, port: u16, args: &str) -> Output {
    let mut child = client_command(name, port, &words(args), false)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let code = wait_until(&mut child, Instant::now() + PROCESS_LIMIT);
    let out = Output {
        code: code.unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    if code.is_none() {
        panic!("{name} {args} still running after {PROCESS_LIMIT:?}: {out:#?}");
    }
    out
}

/// A QoS 1 `mosquitto_pub -d` that must succeed with PUBACK reason 0.
pub fn publish_ok(port: u16, args: &str) -> Output {
    let out = run("mosquitto_pub", port, &format!("-d -q 1 {args}"));
    assert_eq!(out.code, 0, "mosquitto_pub {args}: {out:#?}");
    assert!(
        out.has_line_ending("received PUBACK (Mid: 1, RC:0)"),
        "mosquitto_pub {args}: {out:#?}"
    );
    assert_eq!(out.stderr, "", "mosquitto_pub {args}");
    out
}

/// A `mosquitto_sub` running in the background whose stdout the test reads line by line.
pub struct Sub {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Sub {
    /// Starts `mosquitto_sub -d -W 15 args` and waits until it has connected and had its
    /// subscriptions acknowledged; checks the granted QoS / reason codes it printed (e.g. `"1"`
    /// or `"128, 1"`).
    pub fn subscribed(port: u16, args: &str, granted: &str) -> Sub {
        let args = format!("-d -W {SUB_TIMEOUT_SECS} {args}");
        let mut child = client_command("mosquitto_sub", port, &words(&args), true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto_sub: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Some(read_all(child.stderr.take().unwrap()));
        let mut sub = Sub {
            what: format!("mosquitto_sub {args}"),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        };
        let line = sub.wait_for("the SUBACK", |l| l.starts_with("Subscribed (mid: "));
        let codes = line.split_once("): ").map(|(_, c)| c).unwrap_or_default();
        assert_eq!(codes, granted, "SUBACK codes printed by {}", sub.what);
        sub
    }

    /// Waits for a stdout line matching `pred`; returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.stderr.take().map(|h| h.join().unwrap());
                    panic!(
                        "{}: no line with {what} ({e:?}); stdout so far: {:#?}; stderr: {stderr:?}",
                        self.what, self.seen
                    );
                }
            }
        }
    }

    /// Waits for the client to exit on its own and returns everything it printed.
    pub fn finish(mut self) -> Output {
        let code = wait_until(&mut self.child, Instant::now() + PROCESS_LIMIT);
        let out = self.collect(code.unwrap_or(-1));
        if code.is_none() {
            panic!(
                "{} still running after {PROCESS_LIMIT:?}: {out:#?}",
                self.what
            );
        }
        out
    }

    /// SIGKILL: the client vanishes without DISCONNECT.
    pub fn kill(mut self) {
        self.child.kill().expect("kill client");
        let status = self.child.wait().expect("wait for client");
        assert_eq!(status.code(), None, "{} ended by the signal", self.what);
    }

    fn collect(&mut self, code: i32) -> Output {
        // The reader thread ends at EOF, which comes once the process is gone.
        while let Ok(line) = self.lines.recv_timeout(LINE_WAIT) {
            self.seen.push(line);
        }
        let mut stdout = self.seen.join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        Output {
            code,
            stdout,
            stderr: self
                .stderr
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
