//! The SSE parser over any bytes, fed whole and in two pieces: never panics,
//! and the split does not change what it yields.
#![no_main]
use libfuzzer_sys::fuzz_target;
use triage_backend::sse::SseParser;

fuzz_target!(|data: &[u8]| {
    let whole = SseParser::parse_all(data);
    let cut = data.len() / 2;
    let mut parser = SseParser::new();
    let mut split = Vec::new();
    parser.push(&data[..cut], &mut split);
    parser.push(&data[cut..], &mut split);
    parser.finish(&mut split);
    assert_eq!(format!("{whole:?}"), format!("{split:?}"));
});
