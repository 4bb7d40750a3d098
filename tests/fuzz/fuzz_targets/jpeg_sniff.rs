//! The JPEG structure reader on arbitrary bytes: dimensions or a refusal, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = vigil::contract::jpeg::sniff(data) {
        assert!(info.width > 0 && info.height > 0);
    }
});
