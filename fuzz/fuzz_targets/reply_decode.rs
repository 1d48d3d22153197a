//! Replies in either encoding: decoding never panics, and a decoded reply
//! round-trips; the client's answer check accepts or refuses, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use triage_protocol::{encode, AnswerCheck, Encoding, Reply};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        if let Ok(reply) = Reply::decode(encoding, data) {
            let again = Reply::decode(encoding, &encode(encoding, &reply)).expect("re-decodes");
            assert_eq!(again.is_final(), reply.is_final());
            let mut check = AnswerCheck::default();
            match &reply {
                Reply::Chunk(c) => {
                    let _ = check.chunk(c);
                }
                Reply::Completion(c) => {
                    let _ = check.completion(c);
                }
                Reply::Error(_) => {}
            }
        }
    }
});
