//! Usage events in either encoding: decoding never panics and round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use triage_protocol::{decode, encode, Encoding, UsageEvent};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        if let Ok(e) = decode::<UsageEvent>(encoding, data) {
            let again: UsageEvent = decode(encoding, &encode(encoding, &e)).expect("re-decodes");
            assert_eq!(again, e);
        }
    }
});
