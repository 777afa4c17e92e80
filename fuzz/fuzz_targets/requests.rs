//! See `natter_fuzz::requests` (fuzz/src/requests.rs) for the input layout and the properties.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_fuzz::requests::check(data));
