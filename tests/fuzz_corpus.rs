//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through the same checks the
//! fuzz targets run (`fuzz/src/`, included here), so `cargo test` on stable Rust keeps the
//! corpora passing without cargo fuzz. Inputs named `crash-*` are findings not yet fixed: they
//! are replayed by the ignored test `known_crashes` (see fuzz/README.md).

use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod checks;

/// The corpus files of `target`, sorted; `crashes` picks the `crash-*` ones or the others.
fn corpus(target: &str, crashes: bool) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| is_crash(p) == crashes)
        .collect();
    files.sort();
    files
}

fn is_crash(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("crash-"))
}

/// Runs `check` on every input of `target`; the file's name is printed first, so a failure
/// names the input.
fn replay(target: &str, crashes: bool, mut check: impl FnMut(&[u8])) -> usize {
    let files = corpus(target, crashes);
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}", path.display());
        check(&data);
    }
    files.len()
}

#[test]
fn envelope_corpus() {
    assert!(replay("envelope", false, checks::envelope::check) > 0);
}

#[test]
fn requests_corpus() {
    assert!(replay("requests", false, checks::requests::check) > 0);
}

#[test]
fn topics_corpus() {
    assert!(replay("topics", false, checks::topics::check) > 0);
}

#[test]
fn acl_corpus() {
    assert!(replay("acl", false, checks::acl::check) > 0);
}

#[test]
fn config_corpus() {
    assert!(replay("config", false, checks::config::check) > 0);
}

#[test]
fn http_corpus() {
    let mut harness = checks::http::Harness::new();
    assert!(replay("http", false, |data| harness.check(data)) > 0);
}

/// The findings kept as `crash-*` inputs: each fails until its bug is fixed (all failures are
/// listed, not only the first); once one passes, rename it (drop `crash-`) so the corpus tests
/// keep it.
#[test]
#[ignore = "known findings, listed in fuzz/README.md"]
fn known_crashes() {
    let mut failing = Vec::new();
    let mut run = |target: &str, check: &mut dyn FnMut(&[u8])| {
        for path in corpus(target, true) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            if outcome.is_err() {
                failing.push(path.display().to_string());
            }
        }
    };
    run("envelope", &mut checks::envelope::check);
    run("requests", &mut checks::requests::check);
    run("topics", &mut checks::topics::check);
    run("acl", &mut checks::acl::check);
    run("config", &mut checks::config::check);
    let mut harness = checks::http::Harness::new();
    run("http", &mut |data| harness.check(data));
    assert!(failing.is_empty(), "still failing: {failing:#?}");
}
