//! See `natter_fuzz::acl` (fuzz/src/acl.rs) for the input layout and the properties.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_fuzz::acl::check(data));
