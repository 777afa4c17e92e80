//! The bodies of the fuzz targets, one module per target, each with a `check` function that
//! panics when a property fails. The targets in `fuzz_targets/` call them under libFuzzer;
//! `tests/fuzz_corpus.rs` in the main crate includes this file with `#[path]` and replays
//! every file of `fuzz/corpus/<target>/` through the same functions on stable Rust.
//!
//! Only crates the main crate's tests can also name are used here: `natter`, `serde_json`,
//! `rmp_serde`, `tokio`, `axum`, `tower`, `tempfile` and `rumqttc`.

pub mod acl;
pub mod config;
pub mod envelope;
pub mod http;
pub mod requests;
pub mod topics;
