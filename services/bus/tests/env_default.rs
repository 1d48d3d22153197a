//! `TRIAGE_NATS_URL` is the default NATS URL of every service (compose and
//! the scripts set only it). Its own test binary: it changes the process
//! environment.

use triage_bus::NatsConfig;

#[test]
fn triage_nats_url_sets_the_default_url_and_blank_falls_back() {
    std::env::set_var("TRIAGE_NATS_URL", "nats://nats.internal:4333");
    assert_eq!(NatsConfig::default().url, "nats://nats.internal:4333");
    std::env::set_var("TRIAGE_NATS_URL", "  ");
    assert_eq!(NatsConfig::default().url, "nats://127.0.0.1:4222");
    std::env::remove_var("TRIAGE_NATS_URL");
    assert_eq!(NatsConfig::default().url, "nats://127.0.0.1:4222");
}
