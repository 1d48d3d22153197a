//! Prometheus metrics under vLLM's own names, labelled `model_name`, so dashboards and the
//! tier worker's scaling signals work unchanged against a real vLLM.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// vLLM's buckets for `vllm:time_to_first_token_seconds`.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// vLLM's buckets for `vllm:e2e_request_latency_seconds`.
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabel {
    model_name: String,
    finished_reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabel {
    model_name: String,
    fault: String,
}

type HistogramFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// The instance's metrics and their registry.
#[derive(Debug)]
pub struct SimMetrics {
    registry: Registry,
    model: String,
    /// `vllm:num_requests_running`
    pub running: Gauge,
    /// `vllm:num_requests_waiting`
    pub waiting: Gauge,
    /// `vllm:time_to_first_token_seconds`
    pub ttft: Histogram,
    /// `vllm:e2e_request_latency_seconds`
    pub e2e: Histogram,
    /// `vllm:prompt_tokens_total`
    pub prompt_tokens: Counter,
    /// `vllm:generation_tokens_total`
    pub generation_tokens: Counter,
    success: Family<FinishedLabel, Counter>,
    faults: Family<FaultLabel, Counter>,
}

impl SimMetrics {
    /// Registers all metrics for `model`.
    pub fn new(model: &str) -> Self {
        let mut registry = Registry::default();
        let label = ModelLabel {
            model_name: model.to_owned(),
        };

        let running = Family::<ModelLabel, Gauge>::default();
        registry.register(
            "vllm:num_requests_running",
            "Number of requests currently running (simulated)",
            running.clone(),
        );
        let waiting = Family::<ModelLabel, Gauge>::default();
        registry.register(
            "vllm:num_requests_waiting",
            "Number of requests waiting for a sequence slot (simulated)",
            waiting.clone(),
        );
        let ttft: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(TTFT_BUCKETS.iter().copied()));
        registry.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds",
            ttft.clone(),
        );
        let e2e: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(E2E_BUCKETS.iter().copied()));
        registry.register(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds",
            e2e.clone(),
        );
        // The text encoder appends `_total` to counters, giving vLLM's exposed names.
        let prompt_tokens = Family::<ModelLabel, Counter>::default();
        registry.register(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed",
            prompt_tokens.clone(),
        );
        let generation_tokens = Family::<ModelLabel, Counter>::default();
        registry.register(
            "vllm:generation_tokens",
            "Number of generation tokens processed",
            generation_tokens.clone(),
        );
        let success = Family::<FinishedLabel, Counter>::default();
        registry.register(
            "vllm:request_success",
            "Count of successfully processed requests",
            success.clone(),
        );
        let faults = Family::<FaultLabel, Counter>::default();
        registry.register(
            "sim:faults_injected",
            "Faults injected by the simulator, by kind",
            faults.clone(),
        );

        let running = running.get_or_create(&label).clone();
        let waiting = waiting.get_or_create(&label).clone();
        let ttft = ttft.get_or_create(&label).clone();
        let e2e = e2e.get_or_create(&label).clone();
        let prompt_tokens = prompt_tokens.get_or_create(&label).clone();
        let generation_tokens = generation_tokens.get_or_create(&label).clone();
        Self {
            model: model.to_owned(),
            running,
            waiting,
            ttft,
            e2e,
            prompt_tokens,
            generation_tokens,
            success,
            faults,
            registry,
        }
    }

    /// Counts a finished request by `finish_reason`.
    pub fn finished(&self, reason: &str) {
        self.success
            .get_or_create(&FinishedLabel {
                model_name: self.model.clone(),
                finished_reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts an injected fault.
    pub fn fault(&self, fault: &str) {
        self.faults
            .get_or_create(&FaultLabel {
                model_name: self.model.clone(),
                fault: fault.to_owned(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
