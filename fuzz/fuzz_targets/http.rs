//! See `natter_fuzz::http` (fuzz/src/http.rs) for the input layout and the properties.

#![no_main]

use std::sync::{Mutex, OnceLock};

use natter_fuzz::http::Harness;

/// One app for the whole run: building it (a store, a login) costs far more than a request.
static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(|| Mutex::new(Harness::new()));
    harness
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(data);
});
