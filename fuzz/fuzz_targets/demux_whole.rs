//! The whole input at once: no panic, no allocation past the limits (run with
//! -rss_limit_mb=512 -malloc_limit_mb=64), and the invariants of `common::run`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let _ = common::run([data]);
});
