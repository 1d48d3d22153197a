//! A request in either encoding: decoding never panics, and what decodes
//! re-encodes and decodes to the same value; the params check and the id
//! check never panic either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use triage_protocol::{decode, encode, Encoding, Request};

fuzz_target!(|data: &[u8]| {
    for encoding in [
        Encoding::MsgPack,
        Encoding::Json,
        Encoding::sniff(None, data),
    ] {
        if let Ok(r) = decode::<Request>(encoding, data) {
            let _ = triage_protocol::params::check(&r.params);
            let _ = triage_protocol::check_request_id(&r.id);
            let again: Request = decode(encoding, &encode(encoding, &r)).expect("re-decodes");
            assert_eq!(again.id, r.id);
        }
    }
});
