//! The configuration loader over any TOML text: a clear error or a config,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = triage_runtime::config::load_toml_str::<triage_bus::NatsConfig>(text);
});
