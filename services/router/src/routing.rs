//! Routing a batch of valid requests: plan (overrides), score (truncation,
//! rules, embedding in one model pass, self-rating concurrently), blend,
//! shadow. The service and the offline `score` command both use this, so
//! offline and live decisions agree — except for the texts the service's
//! `batching.model_budget` hands to the first stage under load (reason
//! `model_budget`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::join_all;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::Semaphore;
use triage_complexity::band_share::BandShare;
use triage_complexity::blend::Decision;
use triage_complexity::prompt_text::text_to_score;
use triage_complexity::scorer::{EmbeddingScore, LlmScore, Prepared, Scorer, Source};
use triage_protocol::{Request, RoutingDecision};

use crate::config::PolicyConfig;
use crate::model_queue::{ModelQueue, Outcome};
use crate::policy::{self, Plan};
use crate::self_rating::SelfRater;

/// Texts per model pass unless [`Router::with_max_batch`] says otherwise.
const DEFAULT_MAX_BATCH: usize = 16;

/// The buckets of `model_pass_size` (1 to 128 texts).
pub fn pass_size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 8))
}

/// The reason a text over the model budget carries (with `first_stage=`).
pub const MODEL_BUDGET: &str = "model_budget";

/// A prepared text and its embedding-stage score.
struct Embedded {
    prepared: Arc<Prepared>,
    /// `None` when a rule fired.
    score: Option<EmbeddingScore>,
    /// The transformer could not take it in time; the first stage decided.
    over_budget: bool,
}

/// What happened inside routing one request, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteInfo {
    /// The embedding score came from the cache.
    pub cache_hit: bool,
    /// The static first stage settled it.
    pub first_stage: bool,
    /// It went through the transformer.
    pub model: bool,
    /// The self-rating failed, and how.
    pub rating_failure: Option<&'static str>,
    /// Scoring failed and the request fell back to tier 2.
    pub router_failure: bool,
    /// The transformer could not score it within `batching.model_budget`:
    /// the first stage decided.
    pub over_budget: bool,
}

/// A routed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// Where it goes and why.
    pub decision: RoutingDecision,
    /// How it was scored.
    pub info: RouteInfo,
}

/// Routes requests. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Router {
    scorer: Result<Arc<Scorer>, String>,
    rater: Option<Arc<dyn SelfRater>>,
    rating_slots: Arc<Semaphore>,
    model_threads: usize,
    max_batch: usize,
    pass_sizes: Histogram,
    model_budget: Option<Duration>,
    /// With a budget: the transformer's tier-2 share of the first stage's
    /// band, which decides the texts it has no time for.
    band: Option<Arc<BandShare>>,
    /// Started on the first text that needs the model (inside a runtime).
    queue: Arc<OnceLock<ModelQueue>>,
    policy: PolicyConfig,
    score_timeout: Duration,
}

impl Router {
    /// A router; `scorer` is the error text when the model could not be
    /// loaded, in which case every scored request falls back to tier 2.
    pub fn new(
        scorer: Result<Arc<Scorer>, String>,
        rater: Option<Arc<dyn SelfRater>>,
        rating_concurrency: usize,
        model_threads: usize,
        policy: PolicyConfig,
        score_timeout: Duration,
    ) -> Self {
        Self {
            scorer,
            rater,
            rating_slots: Arc::new(Semaphore::new(rating_concurrency.max(1))),
            model_threads: model_threads.max(1),
            max_batch: DEFAULT_MAX_BATCH,
            pass_sizes: pass_size_histogram(),
            model_budget: None,
            band: None,
            queue: Arc::new(OnceLock::new()),
            policy,
            score_timeout,
        }
    }

    /// Model passes take at most `max_batch` texts (before the first
    /// scored request; the queue starts then).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Observe each model pass's size in `pass_sizes` (before the first
    /// scored request; the queue starts then).
    pub fn with_pass_sizes(mut self, pass_sizes: Histogram) -> Self {
        self.pass_sizes = pass_sizes;
        self
    }

    /// Decide a text with the first stage when the transformer could not
    /// score it within `budget` (see [`crate::model_queue`]); before the
    /// first scored request. Such a text goes to tier 2 as often as the
    /// transformer sends the band's texts there (see
    /// [`triage_complexity::band_share`]). Without a first stage there is
    /// nothing to decide it, and the budget is off.
    pub fn with_model_budget(mut self, budget: Option<Duration>) -> Self {
        let first_stage = self.scorer().is_some_and(|s| s.first_stage().is_some());
        let budget = budget.filter(|_| first_stage);
        self.model_budget = budget;
        self.band = budget.map(|_| Arc::new(BandShare::default()));
        self
    }

    /// Use `band` for the model budget's band share instead of a new one
    /// (after [`Self::with_model_budget`]; a test can start it warm).
    pub fn with_band_share(mut self, band: Arc<BandShare>) -> Self {
        if self.model_budget.is_some() {
            self.band = Some(band);
        }
        self
    }

    /// The first-stage score at or above which a text over the model
    /// budget goes to tier 2 now; `None` without a budget, or until the
    /// transformer has scored enough of the band with the head in force.
    pub fn band_threshold(&self) -> Option<f64> {
        let band = self.band.as_ref()?;
        band.threshold(&self.scorer()?.head().version)
    }

    /// The scorer, when loaded.
    pub fn scorer(&self) -> Option<&Arc<Scorer>> {
        self.scorer.as_ref().ok()
    }

    /// The policy in force.
    pub fn policy(&self) -> &PolicyConfig {
        &self.policy
    }

    /// Routes valid requests (see [`crate::validation::validate`]); one
    /// result per request, in order. Never fails: what cannot be scored goes
    /// to tier 2 with `router_failure`.
    pub async fn route(&self, requests: &[Request]) -> Vec<Routed> {
        let mut out: Vec<Option<Routed>> = vec![None; requests.len()];
        let mut to_score: Vec<(usize, String)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match policy::plan(r, &self.policy) {
                Plan::Fixed(d) => {
                    out[i] = Some(Routed {
                        decision: d,
                        info: RouteInfo::default(),
                    })
                }
                Plan::Score => to_score.push((i, text_to_score(&r.chat_messages()))),
            }
        }
        if !to_score.is_empty() {
            let texts: Vec<String> = to_score.iter().map(|(_, t)| t.clone()).collect();
            let scored = self.score(texts).await;
            for ((i, _), routed) in to_score.into_iter().zip(scored) {
                out[i] = Some(routed);
            }
        }
        out.into_iter()
            .map(|r| {
                let mut r = r.expect("every request routed");
                r.decision = policy::apply_shadow(r.decision, &self.policy);
                r
            })
            .collect()
    }

    async fn score(&self, texts: Vec<String>) -> Vec<Routed> {
        let failure = |why: String| Routed {
            decision: policy::router_failure(&why),
            info: RouteInfo {
                router_failure: true,
                ..RouteInfo::default()
            },
        };
        let scorer = match &self.scorer {
            Ok(s) => Arc::clone(s),
            Err(e) => {
                return texts
                    .iter()
                    .map(|_| failure(format!("model unavailable: {e}")))
                    .collect()
            }
        };
        let n = texts.len();
        let items = match tokio::time::timeout(self.score_timeout, self.embed(&scorer, texts)).await
        {
            Err(_) => {
                return (0..n)
                    .map(|_| failure("scoring timed out".into()))
                    .collect()
            }
            Ok(items) => items,
        };
        let scorer_ref: &Scorer = &scorer;
        let ratings = join_all(items.iter().map(|item| async move {
            match item {
                Ok(Embedded {
                    prepared,
                    score: Some(e),
                    ..
                }) => self.rate(scorer_ref, prepared, e).await,
                _ => LlmScore::Off,
            }
        }))
        .await;
        items
            .into_iter()
            .zip(ratings)
            .map(|(item, llm)| match item {
                Err(e) => failure(e),
                Ok(e) => self.decide_scored(&scorer, e, llm),
            })
            .collect()
    }

    /// A scored text's decision. With a model budget, the band texts the
    /// transformer scored teach the band share (their first-stage score
    /// is recomputed: microseconds against a model pass), and the texts it
    /// had no time for are decided by it.
    fn decide_scored(&self, scorer: &Scorer, item: Embedded, llm: LlmScore) -> Routed {
        let Embedded {
            prepared,
            score,
            over_budget,
        } = item;
        let band = self.band.as_deref();
        let decision = match (&score, band) {
            (Some(first), Some(band)) if over_budget => {
                let t = band.threshold(&scorer.head().version);
                scorer.decide_over_budget(&prepared, first, t)
            }
            _ => scorer.decide(&prepared, score.as_ref(), &llm),
        };
        if let (Some(e), Some(band), false) = (&score, band, over_budget) {
            if let (Source::Model, Some(head)) = (e.source, &e.head) {
                if let Some(first) = scorer.first_stage_score(&prepared) {
                    band.observe(head, first.score, decision.tier2);
                }
            }
        }
        let mut routed = routed(decision, score.as_ref(), &llm);
        if over_budget {
            routed.decision.reasons.push(MODEL_BUDGET.into());
            routed.info.over_budget = true;
        }
        routed
    }

    /// Truncation, rules, cache and first stage off the async threads,
    /// then the model queue for the rest; a text over the model budget
    /// gets the first stage's score instead.
    async fn embed(
        &self,
        scorer: &Arc<Scorer>,
        texts: Vec<String>,
    ) -> Vec<Result<Embedded, String>> {
        let n = texts.len();
        let blocking = Arc::clone(scorer);
        let prepared = tokio::task::spawn_blocking(move || {
            texts
                .iter()
                .map(|t| {
                    let p = blocking
                        .prepare(t)
                        .map_err(|e| format!("truncation: {e}"))?;
                    let known = blocking.score_without_model(&p);
                    Ok((Arc::new(p), known))
                })
                .collect::<Vec<Result<_, String>>>()
        })
        .await
        .unwrap_or_else(|_| vec![Err("scoring panicked".into()); n]);
        // A rule decides without a score, a known score needs no pass.
        let queued: Vec<Arc<Prepared>> = prepared
            .iter()
            .filter_map(|p| match p {
                Ok((p, None)) if p.rule.is_none() => Some(Arc::clone(p)),
                _ => None,
            })
            .collect();
        let mut outcomes = self.queue(scorer).score(queued).await.into_iter();
        prepared
            .into_iter()
            .map(|p| {
                let (prepared, known) = p?;
                let (score, over_budget) = if prepared.rule.is_some() || known.is_some() {
                    (known, false)
                } else {
                    match outcomes.next() {
                        Some(Outcome::Scored(score)) => (score, false),
                        Some(Outcome::OverBudget) => (scorer.first_stage_score(&prepared), true),
                        Some(Outcome::Failed(why)) => return Err(why),
                        None => return Err("scoring lost a text".into()),
                    }
                };
                Ok(Embedded {
                    prepared,
                    score,
                    over_budget,
                })
            })
            .collect()
    }

    /// The model queue, started on first use (inside a runtime).
    fn queue(&self, scorer: &Arc<Scorer>) -> &ModelQueue {
        self.queue.get_or_init(|| {
            ModelQueue::start(
                Arc::clone(scorer),
                self.model_threads,
                self.max_batch,
                self.pass_sizes.clone(),
                self.model_budget,
            )
        })
    }

    /// Routes what needs neither the transformer nor an LLM call — policy
    /// overrides, rule matches, cached scores and texts the first stage
    /// settles — and leaves the rest (`None`) to [`Router::route`]. This
    /// is cheap CPU work (tokenising, table lookups), so the service
    /// publishes these at once instead of holding them behind another
    /// request's model pass. Decisions are the ones `route` would make.
    pub fn route_without_model(&self, requests: &[Request]) -> Vec<Option<Routed>> {
        requests
            .iter()
            .map(|r| {
                let routed = match policy::plan(r, &self.policy) {
                    Plan::Fixed(d) => Routed {
                        decision: d,
                        info: RouteInfo::default(),
                    },
                    Plan::Score => {
                        let scorer = self.scorer.as_ref().ok()?;
                        let p = scorer.prepare(&text_to_score(&r.chat_messages())).ok()?;
                        let (e, llm) = if p.rule.is_some() {
                            (None, LlmScore::Off)
                        } else {
                            let e = scorer.score_without_model(&p)?;
                            let llm = self.known_llm(&e)?;
                            (Some(e), llm)
                        };
                        finish(scorer, &p, e, llm)
                    }
                };
                Some(Routed {
                    decision: policy::apply_shadow(routed.decision, &self.policy),
                    info: routed.info,
                })
            })
            .collect()
    }

    /// The LLM score when no call is needed: none configured, a text the
    /// first stage settled (clear-cut), or a rating remembered with the
    /// cached score. `None`: the rater must be asked.
    fn known_llm(&self, e: &EmbeddingScore) -> Option<LlmScore> {
        if self.rater.is_none() || e.source == Source::FirstStage {
            return Some(LlmScore::Off);
        }
        e.cached_llm.map(LlmScore::Score)
    }

    async fn rate(&self, scorer: &Scorer, p: &Prepared, e: &EmbeddingScore) -> LlmScore {
        if let Some(known) = self.known_llm(e) {
            return known;
        }
        let Some(rater) = &self.rater else {
            return LlmScore::Off;
        };
        let Ok(_permit) = self.rating_slots.acquire().await else {
            return LlmScore::Failed("error".into());
        };
        match rater.rate(&p.tokens.text).await {
            Ok(v) => {
                scorer.remember_llm(p, e, v);
                LlmScore::Score(v)
            }
            Err(err) => LlmScore::Failed(err.kind().to_string()),
        }
    }
}

/// The decision and its metrics from a scored text.
fn finish(scorer: &Scorer, p: &Prepared, e: Option<EmbeddingScore>, llm: LlmScore) -> Routed {
    routed(scorer.decide(p, e.as_ref(), &llm), e.as_ref(), &llm)
}

/// A scorer's decision with the metrics of how it was scored.
fn routed(decision: Decision, e: Option<&EmbeddingScore>, llm: &LlmScore) -> Routed {
    Routed {
        decision: policy::scored(decision),
        info: RouteInfo {
            cache_hit: e.is_some_and(|e| e.cached),
            first_stage: e.is_some_and(|e| e.source == Source::FirstStage),
            model: e.is_some_and(|e| e.source == Source::Model && !e.cached),
            rating_failure: rating_failure_kind(llm),
            router_failure: false,
            over_budget: false,
        },
    }
}

fn rating_failure_kind(llm: &LlmScore) -> Option<&'static str> {
    match llm {
        LlmScore::Failed(k) => Some(match k.as_str() {
            "timeout" => "timeout",
            "unparsable" => "unparsable",
            _ => "error",
        }),
        _ => None,
    }
}
