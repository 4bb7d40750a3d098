//! Header validation and every check at intake, on arbitrary keys, headers and values: a frame
//! is either accepted with sane metadata or refused with a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::contract::frame::EVENT_TIME_FLOOR_MS;
use vigil::contract::Limits;

fuzz_target!(|data: &[u8]| {
    // Layout: [n_headers] then for each: [name_len][name][value_len][value], then [key?][key_len]
    // [key], then the rest is the value. Lengths are one byte.
    let mut rest = data;
    let mut take = |n: usize| {
        let n = n.min(rest.len());
        let (a, b) = rest.split_at(n);
        rest = b;
        a
    };
    let count = take(1).first().copied().unwrap_or(0) % 8;
    let mut headers = Vec::new();
    for _ in 0..count {
        let n = take(1).first().copied().unwrap_or(0) as usize;
        let name = String::from_utf8_lossy(take(n)).into_owned();
        let n = take(1).first().copied().unwrap_or(0) as usize;
        headers.push((name, take(n).to_vec()));
    }
    let has_key = take(1).first().is_some_and(|b| b & 1 == 1);
    let n = take(1).first().copied().unwrap_or(0) as usize;
    let key = take(n).to_vec();
    let value = rest;
    let limits = Limits {
        max_frame_bytes: 1 << 20,
        max_pixels: 40_000_000,
        max_age_ms: Some(86_400_000),
        ..Limits::default()
    };
    let now = 1_800_000_000_000;
    if let Ok((meta, info)) =
        vigil::source::validate(has_key.then_some(&key[..]), &headers, value, &limits, now)
    {
        assert!(meta.seq <= i64::MAX as u64);
        assert!(meta.captured_at_ms >= EVENT_TIME_FLOOR_MS);
        assert!(meta.captured_at_ms <= now + limits.max_future_ms);
        assert!(info.width as u64 * info.height as u64 <= limits.max_pixels);
        assert_eq!(Some(meta.camera.as_bytes()), has_key.then_some(&key[..]));
    }
});
