//! See `natter_fuzz::envelope` (fuzz/src/envelope.rs) for the input layout and the properties.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_fuzz::envelope::check(data));
