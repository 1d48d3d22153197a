//! The KEDA examples in deploy/keda name the streams and durable consumers
//! the services really use, so a scaler watches the queue its service reads.

use std::path::Path;

use triage_protocol::{Namespace, StreamKind, Tier};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/keda")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_watches(file: &str, stream: StreamKind, consumer: &str) {
    let text = example(file);
    let ns = Namespace::default();
    assert!(
        text.contains(&format!("stream: \"{}\"", ns.stream_name(stream))),
        "{file} does not watch {}",
        ns.stream_name(stream)
    );
    assert!(
        text.contains(&format!("consumer: \"{consumer}\"")),
        "{file} does not watch the consumer {consumer}"
    );
    assert!(text.contains("type: nats-jetstream"), "{file}");
}

#[test]
fn each_scaler_watches_its_services_own_consumer() {
    let router = triage_router::config::RouterConfig::default();
    assert_watches(
        "router.yaml",
        StreamKind::Requests,
        &router.consumer.durable,
    );
    let worker = triage_worker::config::WorkerConfig::default();
    for tier in [Tier::Small, Tier::Large] {
        let file = format!("worker-tier{}.yaml", tier.number());
        let consumer = worker.consumer.durable_name(tier);
        assert_watches(&file, Namespace::tier_stream(tier), &consumer);
    }
    let ledger = triage_ledger::config::LedgerConfig::default();
    assert_watches("ledger.yaml", StreamKind::Usage, &ledger.writer.consumer);
    assert!(example("gateway.yaml").contains("type: cpu"));
}
