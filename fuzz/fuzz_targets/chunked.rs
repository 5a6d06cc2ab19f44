#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::chunked(data));
