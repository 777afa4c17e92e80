//! natter-chat, the terminal client, as a user or a script runs it: the real binary against a
//! real server on ephemeral ports.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_natter-chat");

/// How long one natter-chat run may take (the machine is shared: generous).
const RUN: Duration = Duration::from_secs(40);
/// How long a prompt event may take to show.
const SOON: Duration = Duration::from_secs(20);

fn server() -> TestServer {
    TestServer::start_with_users(&[("alice", "alice-secret"), ("bob", "bob-secret")], |_| {})
}

/// natter-chat for `user` on `mqtt` (HOST:PORT), with its data in `dir`.
fn chat_on(mqtt: &str, server: &TestServer, user: &str, password: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--mqtt")
        .arg(mqtt)
        .arg("--http")
        .arg(format!("http://{}", server.http))
        .arg("--user")
        .arg(user)
        .arg("--password")
        .arg(password)
        .arg("--data-dir")
        .arg(dir)
        .env("NATTER_CHAT_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

fn chat(server: &TestServer, user: &str, dir: &Path) -> Command {
    let password = format!("{user}-secret");
    chat_on(&server.mqtt.to_string(), server, user, &password, dir)
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn ok(self, what: &str) -> Ran {
        assert!(
            self.status.success(),
            "{what}: {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` with `stdin` as its input, killing it (and failing) if it outlives `within`.
fn run_with(mut cmd: Command, stdin: Option<&str>, within: Duration) -> Ran {
    let start = Instant::now();
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start natter-chat");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for natter-chat") {
            break Some(status);
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!("natter-chat ran past {within:?}\nstdout: {stdout}\nstderr: {stderr}");
    };
    Ran {
        status,
        stdout,
        stderr,
        took: start.elapsed(),
    }
}

fn run(cmd: Command) -> Ran {
    run_with(cmd, None, RUN)
}

fn with_args(mut cmd: Command, args: &[&str]) -> Command {
    cmd.args(args);
    cmd
}

/// `read CONV --json` as `user`: the entries, oldest first.
fn read_json(server: &TestServer, user: &str, dir: &Path, conv: &str) -> Vec<Value> {
    let ran = run(with_args(
        chat(server, user, dir),
        &["read", conv, "--json"],
    ))
    .ok("read");
    ran.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn seq_of(ran: &Ran) -> u64 {
    ran.stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a seq: {:?} (stderr {})", ran.stdout, ran.stderr))
}

/// A port on loopback that nobody listens on.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn send_prints_the_seq_and_read_prints_the_entries_in_order() {
    let server = server();
    let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let first = run(with_args(
        chat(&server, "alice", alice.path()),
        &["send", "d.alice.bob", "hello bob"],
    ))
    .ok("first send");
    assert_eq!(seq_of(&first), 1);
    let second = run(with_args(
        chat(&server, "alice", alice.path()),
        &[
            "send",
            "d.alice.bob",
            "-- are you there?",
            "--reply-to",
            "1",
        ],
    ))
    .ok("second send");
    assert_eq!(seq_of(&second), 2);

    let entries = read_json(&server, "bob", bob.path(), "d.alice.bob");
    assert_eq!(entries.len(), 2, "{entries:?}");
    for (e, (seq, text)) in entries
        .iter()
        .zip([(1, "hello bob"), (2, "-- are you there?")])
    {
        assert_eq!(e["seq"], seq, "{e}");
        assert_eq!(e["t"], text, "{e}");
        assert_eq!(e["from"], "alice", "{e}");
        assert_eq!(e["conv"], "d.alice.bob", "{e}");
        assert_eq!(e["k"], "msg", "{e}");
    }
    assert_eq!(entries[1]["re"], 1);

    // The person's view, and --after.
    let human = run(with_args(
        chat(&server, "bob", bob.path()),
        &["read", "d.alice.bob"],
    ))
    .ok("read");
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "#1 alice: hello bob",
            "#2 alice: -- are you there? (reply to #1)"
        ],
        "{}",
        human.stdout
    );
    let after = run(with_args(
        chat(&server, "bob", bob.path()),
        &["read", "d.alice.bob", "--after", "1", "--json"],
    ))
    .ok("read --after");
    let after: Vec<Value> = after
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["seq"], 2);
}

#[test]
fn a_send_while_the_server_is_down_is_queued_and_flush_sends_it_once() {
    let server = server();
    let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let down = format!("127.0.0.1:{}", free_port());

    let queued = run(with_args(
        chat_on(&down, &server, "alice", "alice-secret", alice.path()),
        &["send", "d.alice.bob", "while you were away"],
    ))
    .ok("send with the server down");
    assert!(
        queued.took < Duration::from_secs(20),
        "took {:?}",
        queued.took
    );
    assert!(
        queued.stdout.trim().is_empty(),
        "no seq without the server: {}",
        queued.stdout
    );
    assert!(
        queued.stderr.contains("queued") && queued.stderr.contains("flush"),
        "{}",
        queued.stderr
    );
    assert!(alice.path().join("natter-client.db").exists());

    let flushed = run(with_args(chat(&server, "alice", alice.path()), &["flush"])).ok("flush");
    assert_eq!(flushed.stdout.trim(), "1", "{}", flushed.stderr);
    let again = run(with_args(chat(&server, "alice", alice.path()), &["flush"])).ok("second flush");
    assert_eq!(again.stdout.trim(), "0", "{}", again.stderr);

    let entries = read_json(&server, "bob", bob.path(), "d.alice.bob");
    let copies = entries
        .iter()
        .filter(|e| e["t"] == "while you were away")
        .count();
    assert_eq!(copies, 1, "{entries:?}");
    assert_eq!(entries.len(), 1, "{entries:?}");
}

/// A child process killed when dropped (a failing test leaves no tail running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tail_prints_each_event_as_a_json_line() {
    let server = server();
    let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut tail = chat(&server, "bob", bob.path());
    tail.arg("tail")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut tail = Running(tail.spawn().expect("start tail"));
    let stdout = tail.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_event = |what: &str, wanted: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + SOON;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("tail printed no {what} within {SOON:?}"));
            let event: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
            if wanted(&event) {
                return event;
            }
        }
    };
    next_event("synced event", &|e| e["event"] == "synced");

    run(with_args(
        chat(&server, "alice", alice.path()),
        &["send", "d.alice.bob", "hi bob"],
    ))
    .ok("send");
    let entry = next_event("entry", &|e| e["event"] == "entry");
    assert_eq!(entry["t"], "hi bob", "{entry}");
    assert_eq!(entry["from"], "alice", "{entry}");
    assert_eq!(entry["conv"], "d.alice.bob", "{entry}");
    assert_eq!(entry["seq"], 1, "{entry}");
    assert!(
        tail.0.try_wait().unwrap().is_none(),
        "tail goes on until stopped"
    );
}

#[test]
fn a_refused_login_exits_2() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let send = run(with_args(
        chat_on(
            &server.mqtt.to_string(),
            &server,
            "alice",
            "wrong",
            dir.path(),
        ),
        &["send", "d.alice.bob", "hi"],
    ));
    assert_eq!(send.code(), Some(2), "stderr: {}", send.stderr);
    assert!(send.stderr.contains("refused"), "{}", send.stderr);

    let dir = tempfile::tempdir().unwrap();
    let read = run(with_args(
        chat_on(
            &server.mqtt.to_string(),
            &server,
            "bob",
            "wrong",
            dir.path(),
        ),
        &["read", "d.alice.bob"],
    ));
    assert_eq!(read.code(), Some(2), "stderr: {}", read.stderr);
    assert!(read.stdout.is_empty(), "{}", read.stdout);
}

#[test]
fn groups_conversations_and_mark_read_with_a_token_login() {
    let server = server();
    let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let token = |user: &str, dir: &Path, args: &[&str]| {
        let mut cmd = chat(&server, user, dir);
        cmd.arg("--token").args(args);
        run(cmd)
    };

    let created = token(
        "alice",
        alice.path(),
        &["group", "create", "team", "--name", "Team", "bob"],
    )
    .ok("group create");
    assert_eq!(created.stdout.trim(), "g.team");
    let sent = token("alice", alice.path(), &["send", "g.team", "hello team"]).ok("send");
    assert_eq!(seq_of(&sent), 1);

    let unread_of_team = |bob_dir: &Path| -> u64 {
        let list = token("bob", bob_dir, &["conversations", "--json"]).ok("conversations");
        let team: Vec<Value> = list
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|c| c["conv"] == "g.team")
            .collect();
        assert_eq!(team.len(), 1, "{}", list.stdout);
        assert_eq!(team[0]["name"], "Team");
        team[0]["unread"].as_u64().expect("unread")
    };
    assert_eq!(unread_of_team(bob.path()), 1);
    let human = token("bob", bob.path(), &["conversations"]).ok("conversations");
    assert!(
        human.stdout.lines().any(|l| l.starts_with("g.team")
            && l.contains(" 1 unread")
            && l.contains("hello team")),
        "{}",
        human.stdout
    );

    token("bob", bob.path(), &["mark-read", "g.team", "1"]).ok("mark-read");
    let deadline = Instant::now() + SOON;
    while unread_of_team(bob.path()) != 0 {
        assert!(Instant::now() < deadline, "still unread after mark-read");
    }

    token("alice", alice.path(), &["group", "remove", "team", "bob"]).ok("group remove");
    let refused = token("bob", bob.path(), &["send", "g.team", "am I still in?"]);
    assert_eq!(refused.code(), Some(1), "{}", refused.stderr);
}

#[test]
fn the_interactive_mode_shows_a_conversation_and_sends_lines() {
    let server = server();
    let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(with_args(
        chat(&server, "bob", bob.path()),
        &["send", "d.alice.bob", "hi alice"],
    ))
    .ok("send");

    let ran = run_with(
        chat(&server, "alice", alice.path()),
        Some("/list\n/dm bob\nhello from the prompt\n/quit\n"),
        RUN,
    )
    .ok("interactive");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("d.alice.bob") && l.contains(" 1 unread")),
        "the conversation list: {}",
        ran.stdout
    );
    let opened = lines
        .iter()
        .position(|l| l.starts_with("── d.alice.bob"))
        .unwrap_or_else(|| panic!("/dm bob opened nothing: {}", ran.stdout));
    assert_eq!(
        lines.get(opened + 1),
        Some(&"#1 bob: hi alice"),
        "{}",
        ran.stdout
    );

    let entries = read_json(&server, "bob", bob.path(), "d.alice.bob");
    let texts: Vec<&str> = entries.iter().filter_map(|e| e["t"].as_str()).collect();
    assert_eq!(texts, ["hi alice", "hello from the prompt"], "{entries:?}");
}

#[test]
fn a_usage_error_exits_1_not_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--mqtt",
        "127.0.0.1:1",
        "--user",
        "alice",
        "--password",
        "x",
        "--data-dir",
    ])
    .arg(dir.path())
    .args(["send", "d.alice.bob"])
    .stdin(Stdio::null());
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(1), "{}", ran.stderr);
    assert!(ran.stderr.contains("TEXT"), "{}", ran.stderr);
}

/// The outbox is on disk before `send` waits for anything: a client killed with SIGKILL while
/// the server is unreachable loses nothing, and the next run delivers it once.
#[test]
fn the_outbox_survives_kill_9_of_the_client() {
    let server = server();
    let proxy = common::proxy::Proxy::start(server.mqtt);
    proxy.set_refusing(true);
    let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let text = "written before the crash";
    let mut cmd = with_args(
        chat_on(
            &proxy.addr().to_string(),
            &server,
            "alice",
            "alice-secret",
            alice.path(),
        ),
        &["send", "d.alice.bob", text, "--wait", "120"],
    );
    let child = Running(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The message is in the store's write-ahead log (SQLite's WAL holds the new page) and the
    // client is trying to reach the server.
    let wal = alice.path().join("natter-client.db-wal");
    let deadline = Instant::now() + SOON;
    while !std::fs::read(&wal).is_ok_and(|b| b.windows(text.len()).any(|w| w == text.as_bytes()))
        || proxy.connections() == 0
    {
        assert!(
            Instant::now() < deadline,
            "the message never reached the outbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child); // SIGKILL: no shutdown, no flush.

    proxy.set_refusing(false);
    let flushed = run(with_args(chat(&server, "alice", alice.path()), &["flush"])).ok("flush");
    assert_eq!(flushed.stdout.trim(), "1", "{}", flushed.stderr);
    let entries = read_json(&server, "bob", bob.path(), "d.alice.bob");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["t"], text);
}
