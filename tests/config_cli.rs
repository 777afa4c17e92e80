//! The `natter` binary's configuration handling, as a user meets it: a bad file or variable
//! ends the process before anything starts, with exit code 2 and one stderr line naming the
//! key; `natter config print` shows the embedded defaults.

use std::process::{Command, Output};

/// The binary with no `NATTER_*` variables inherited from whoever runs the tests.
fn natter() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
    for (name, _) in std::env::vars() {
        if name.starts_with("NATTER_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs `natter serve --config FILE` with `toml` as the file, plus `env`.
fn serve_with(toml: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, toml).expect("write config");
    let mut cmd = natter();
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    cmd.envs(env.iter().copied());
    cmd.output().expect("run natter")
}

/// Asserts the run failed as a config error: exit code 2 and exactly one stderr line, which is
/// returned.
fn config_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    lines[0].to_string()
}

#[test]
fn a_bad_file_is_one_line_naming_the_key_and_exit_code_2() {
    let cases = [
        (
            "[storage]\nsynchronous = \"sometimes\"\n",
            "natter: config: storage.synchronous: unknown variant `sometimes`",
        ),
        (
            "[mqtt]\nmax_inflight = \"lots\"\n",
            "natter: config: mqtt.max_inflight: invalid type: string \"lots\"",
        ),
        (
            "[mqtt]\nmax_inflite = 5\n",
            "natter: config: mqtt.max_inflite: unknown key",
        ),
        (
            "[mqtt]\nlisten = \"localhost-ish\"\n",
            "natter: config: mqtt.listen: `localhost-ish` is not an address",
        ),
    ];
    for (toml, want) in cases {
        let line = config_error(&serve_with(toml, &[]));
        assert!(line.starts_with(want), "for {toml:?}: {line}");
    }
}

#[test]
fn a_bad_environment_value_names_the_key() {
    let out = serve_with("", &[("NATTER_MQTT_QUEUE_OVERFLOW", "explode")]);
    let line = config_error(&out);
    assert!(
        line.starts_with("natter: config: mqtt.queue_overflow: unknown variant `explode`"),
        "{line}"
    );
}

#[test]
fn a_syntax_error_keeps_its_line_and_column() {
    let line = config_error(&serve_with("[mqtt]\nlisten = \n", &[]));
    assert!(line.contains("bad.toml: line 2, column "), "{line}");
}

#[test]
fn config_print_shows_the_embedded_defaults() {
    let out = natter()
        .args(["config", "print"])
        .output()
        .expect("run natter");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        include_str!("../config/natter.toml")
    );
}
