//! See `natter_fuzz::topics` (fuzz/src/topics.rs) for the input layout and the properties.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_fuzz::topics::check(data));
