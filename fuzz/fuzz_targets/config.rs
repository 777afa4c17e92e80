//! See `natter_fuzz::config` (fuzz/src/config.rs) for the input layout and the properties.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_fuzz::config::check(data));
