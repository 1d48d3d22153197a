//! Routing with the real model, without NATS: determinism, rules, the
//! self-rating blend and its fallback, failures, overrides and shadow mode.
//! Needs all-MiniLM-L6-v2 in $TRIAGE_CACHE (the set-up fetches it).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use triage_complexity::band_share::BandShare;
use triage_complexity::scorer::Prepared;
use triage_complexity::scorer::{Scorer, ScorerConfig};
use triage_complexity::static_embedding::FirstStageConfig;
use triage_complexity::ModelFiles;
use triage_protocol::{Request, Tier};
use triage_router::config::PolicyConfig;
use triage_router::model_queue::{ModelQueue, Outcome};
use triage_router::self_rating::{RatingError, RatingFuture, SelfRater};
use triage_router::Router;

fn scorer() -> Arc<Scorer> {
    static SCORER: OnceLock<Arc<Scorer>> = OnceLock::new();
    SCORER
        .get_or_init(|| {
            if let Err(e) = ModelFiles::default_minilm().check() {
                panic!("{e}");
            }
            Arc::new(Scorer::new(ScorerConfig::default()).unwrap())
        })
        .clone()
}

struct Fixed(Result<f64, RatingError>);

impl SelfRater for Fixed {
    fn rate<'a>(&'a self, _text: &'a str) -> RatingFuture<'a> {
        let r = self.0.clone();
        Box::pin(async move { r })
    }
}

fn router(rater: Option<Arc<dyn SelfRater>>, policy: PolicyConfig) -> Router {
    Router::new(Ok(scorer()), rater, 4, 1, policy, Duration::from_secs(60))
}

const PLAIN: &str = "Why does warmth make you feel tired?";

/// Everyday prompts, several of them clear-cut for the first stage.
const EVERYDAY: [&str; 6] = [
    PLAIN,
    "Write a limerick about a cat.",
    "What is the capital of Australia?",
    "Summarise the plot of Hamlet.",
    "Translate 'good morning' into French.",
    "Describe the water cycle for a ten-year-old.",
];

#[tokio::test]
async fn same_request_same_score_bit_for_bit_whatever_the_batch() {
    let r = router(None, PolicyConfig::default());
    let alone = r.route(&[Request::from_prompt(PLAIN)]).await.remove(0);
    let batch: Vec<Request> = [
        "Write a limerick about a cat.",
        PLAIN,
        "Summarise the causes of the French Revolution in three paragraphs, citing the economic crisis, Enlightenment ideas and the fiscal policies of Louis XVI.",
    ]
    .iter()
    .map(|p| Request::from_prompt(*p))
    .collect();
    // A fresh router: no cache to hide a difference.
    let fresh = Router::new(
        Ok(Arc::new(Scorer::new(ScorerConfig::default()).unwrap())),
        None,
        4,
        1,
        PolicyConfig::default(),
        Duration::from_secs(60),
    );
    let in_batch = fresh.route(&batch).await.remove(1);
    assert_eq!(
        alone.decision.score.to_bits(),
        in_batch.decision.score.to_bits()
    );
    assert_eq!(alone.decision.reasons, in_batch.decision.reasons);
    // Repeated: served from the cache, still the same.
    let again = r.route(&[Request::from_prompt(PLAIN)]).await.remove(0);
    assert!(again.info.cache_hit);
    assert_eq!(again.decision, alone.decision);
}

#[tokio::test]
async fn rules_force_tier2_before_the_model() {
    let r = router(None, PolicyConfig::default());
    let out = r
        .route(&[Request::from_prompt("Fix this:\n```\nfn main() {}\n```")])
        .await
        .remove(0);
    assert_eq!(out.decision.tier, Tier::Large);
    assert_eq!(out.decision.reasons, vec!["rule:code_fence"]);
    assert!(!out.info.model);
}

/// A router on its own scorer without a cache, so one test's ratings are
/// not served to another.
fn uncached(rater: Option<Arc<dyn SelfRater>>) -> Router {
    let scorer = Scorer::new(ScorerConfig {
        cache_capacity: 0,
        // The LLM is only asked about what reaches the transformer.
        first_stage: FirstStageConfig {
            enabled: false,
            ..FirstStageConfig::default()
        },
        ..ScorerConfig::default()
    })
    .unwrap();
    Router::new(
        Ok(Arc::new(scorer)),
        rater,
        4,
        1,
        PolicyConfig::default(),
        Duration::from_secs(60),
    )
}

#[tokio::test]
async fn self_rating_is_blended_and_its_failure_falls_back() {
    let alone = uncached(None)
        .route(&[Request::from_prompt(PLAIN)])
        .await
        .remove(0);
    let e = alone.decision.score;
    let rated = uncached(Some(Arc::new(Fixed(Ok(0.9)))))
        .route(&[Request::from_prompt(PLAIN)])
        .await
        .remove(0);
    assert!((rated.decision.score - (0.6 * e + 0.4 * 0.9)).abs() < 1e-12);
    assert!(rated.decision.reasons.contains(&"llm=0.90".to_string()));
    let failed = uncached(Some(Arc::new(Fixed(Err(RatingError::Timeout)))))
        .route(&[Request::from_prompt(PLAIN)])
        .await
        .remove(0);
    assert_eq!(
        failed.decision.score.to_bits(),
        e.to_bits(),
        "embedding alone"
    );
    assert!(failed
        .decision
        .reasons
        .contains(&"llm_failed:timeout".to_string()));
    assert_eq!(failed.info.rating_failure, Some("timeout"));
}

#[tokio::test]
async fn missing_model_routes_to_tier2_as_router_failure() {
    let r = Router::new(
        Err("model file missing".into()),
        None,
        4,
        1,
        PolicyConfig::default(),
        Duration::from_secs(1),
    );
    let out = r.route(&[Request::from_prompt(PLAIN)]).await.remove(0);
    assert_eq!(out.decision.tier, Tier::Large);
    assert_eq!(out.decision.reasons[0], "router_failure");
    assert!(out.info.router_failure);
}

#[tokio::test]
async fn overrides_and_shadow_mode() {
    let mut policy = PolicyConfig::default();
    policy.tenant_tiers.insert("pinned".into(), 2);
    let r = router(None, policy.clone());
    let mut explicit = Request::from_prompt(PLAIN);
    explicit.tier = Some(1);
    let mut pinned = Request::from_prompt(PLAIN);
    pinned.tenant = Some("pinned".into());
    let out = r.route(&[explicit, pinned]).await;
    assert_eq!(out[0].decision.tier, Tier::Small);
    assert_eq!(out[0].decision.reasons, vec!["override:1"]);
    assert_eq!(out[1].decision.tier, Tier::Large);
    assert_eq!(out[1].decision.reasons, vec!["tenant_pin:2"]);

    policy.shadow = true;
    policy.shadow_default_tier = 2;
    let shadow = router(None, policy)
        .route(&[Request::from_prompt(PLAIN)])
        .await
        .remove(0);
    assert_eq!(shadow.decision.tier, Tier::Large);
    assert!(shadow.decision.shadow);
    assert!(shadow.decision.shadow_tier.is_some());
}

#[tokio::test]
async fn first_stage_settles_clear_cut_prompts_without_the_transformer() {
    // Every dev-like prompt gets a first-stage score; with the band
    // [0.35, 0.65) most are settled, and what is settled says so.
    let r = router(Some(Arc::new(Fixed(Ok(0.9)))), PolicyConfig::default());
    let reqs: Vec<Request> = EVERYDAY.iter().map(|p| Request::from_prompt(*p)).collect();
    let out = r.route(&reqs).await;
    let settled: Vec<_> = out.iter().filter(|o| o.info.first_stage).collect();
    for o in &settled {
        assert!(
            o.decision.reasons[0].starts_with("first_stage="),
            "{:?}",
            o.decision.reasons
        );
        assert!(
            !o.decision.reasons.iter().any(|x| x.starts_with("llm")),
            "no LLM call"
        );
        assert!(!o.info.model);
    }
    for o in out
        .iter()
        .filter(|o| !o.info.first_stage && !o.info.cache_hit)
    {
        assert!(o.info.model);
        assert!(o.decision.reasons.contains(&"llm=0.90".to_string()));
    }
    assert!(!settled.is_empty(), "some of these are clear-cut");
}

#[tokio::test]
async fn routing_without_the_model_agrees_with_the_full_path_and_leaves_the_rest() {
    // Two routers on separate scorers without a cache: one takes the quick
    // path first, the other only the full path.
    let fresh = || {
        let scorer = Scorer::new(ScorerConfig {
            cache_capacity: 0,
            ..ScorerConfig::default()
        })
        .unwrap();
        let policy = PolicyConfig {
            tenant_tiers: [("batch".to_string(), 1u8)].into_iter().collect(),
            ..PolicyConfig::default()
        };
        Router::new(
            Ok(Arc::new(scorer)),
            Some(Arc::new(Fixed(Ok(0.9)))),
            4,
            1,
            policy,
            Duration::from_secs(60),
        )
    };
    let (quick, full) = (fresh(), fresh());
    let mut reqs: Vec<Request> = EVERYDAY
        .iter()
        .chain(&[
            "Solve $x^2 - 5x + 6 = 0$.",
            "Compare the fiscal policies of Louis XVI with those of his ministers Turgot and Necker, and explain why they failed.",
        ])
        .map(|p| Request::from_prompt(*p))
        .collect();
    let mut pinned = Request::from_prompt("Explain quantum entanglement in depth.");
    pinned.tenant = Some("batch".into());
    reqs.push(pinned);

    let early = quick.route_without_model(&reqs);
    let expected = full.route(&reqs).await;
    let mut decided = 0;
    for ((e, x), req) in early.iter().zip(&expected).zip(&reqs) {
        match e {
            Some(e) => {
                decided += 1;
                assert_eq!(e.decision, x.decision, "{:?}", req.prompt);
                assert!(!e.info.model, "no transformer on the quick path");
            }
            // Left for the full path: exactly what needs the transformer
            // (and then the LLM rating).
            None => {
                assert!(x.info.model, "{:?} needed no model", req.prompt);
                assert!(x.decision.reasons.contains(&"llm=0.90".to_string()));
            }
        }
    }
    // The rule, the tenant pin and the settled prompts are decided early.
    assert!(early[6]
        .as_ref()
        .is_some_and(|r| r.decision.reasons == ["rule:math"]));
    assert!(early[8]
        .as_ref()
        .is_some_and(|r| r.decision.tier == Tier::Small));
    assert!(decided >= 3, "only {decided} decided without the model");
}

/// `_count` and `_sum` of a histogram, read the way Prometheus would.
fn count_and_sum(h: &prometheus_client::metrics::histogram::Histogram) -> (u64, f64) {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("pass", "passes", h.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    };
    (value("pass_count ") as u64, value("pass_sum "))
}

// The default current-thread runtime polls every caller, and so queues
// every text, before the model worker first runs: the passes are then
// exactly "everything waiting, up to max_batch", whoever queued it.
#[tokio::test]
async fn a_model_pass_takes_everything_waiting_up_to_max_batch() {
    let sizes = triage_router::routing::pass_size_histogram();
    let queue = ModelQueue::start(scorer(), 1, 8, sizes.clone(), None);
    let texts: Vec<Arc<Prepared>> = (0..12)
        .map(|i| {
            let t = format!("Explain step {i} of a proof that there are infinitely many primes.");
            Arc::new(scorer().prepare(&t).unwrap())
        })
        .collect();
    let callers = texts.chunks(4).map(|c| queue.score(c.to_vec()));
    let outcomes: Vec<Outcome> = futures::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(count_and_sum(&sizes), (2, 12.0), "one pass of 8, one of 4");
    let refs: Vec<&Prepared> = texts.iter().map(|p| p.as_ref()).collect();
    let alone = scorer().embedding_scores(&refs).unwrap();
    for (outcome, single) in outcomes.iter().zip(alone) {
        let Outcome::Scored(Some(e)) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(e.score, single.unwrap().score);
    }
}

#[tokio::test]
async fn over_the_model_budget_the_first_stage_decides() {
    // Texts the first stage leaves to the transformer (inside its band).
    let candidates = (0..40).map(|i| {
        format!(
            "Question {i}: which of these best explains the result? (A) inflation (B) tariffs (C) {} (D) none of these. Think step by step.",
            EVERYDAY[i % EVERYDAY.len()]
        )
    });
    let mut band = candidates.filter(|t| {
        let p = scorer().prepare(t).unwrap();
        p.rule.is_none() && scorer().score_without_model(&p).is_none()
    });
    let (long, other) = (band.next().unwrap(), band.next().unwrap());
    let budgeted = router(None, PolicyConfig::default()).with_model_budget(Some(Duration::ZERO));
    // The first pass times the model; after it nothing fits a zero budget.
    let first = budgeted
        .route(&[Request::from_prompt(&long)])
        .await
        .remove(0);
    assert!(
        !first.info.over_budget && first.info.model,
        "{:?}",
        first.decision.reasons
    );
    let second = budgeted
        .route(&[Request::from_prompt(&other)])
        .await
        .remove(0);
    assert!(second.info.over_budget && second.info.first_stage);
    assert!(second.decision.reasons.iter().any(|r| r == "model_budget"));
    let expected = scorer()
        .first_stage_score(&scorer().prepare(&other).unwrap())
        .unwrap()
        .score;
    assert!(
        second
            .decision
            .reasons
            .contains(&format!("first_stage={expected:.4}")),
        "{:?}",
        second.decision.reasons
    );
    // Without a budget the same text takes the transformer.
    let unbudgeted = router(None, PolicyConfig::default());
    let third = unbudgeted
        .route(&[Request::from_prompt(&other)])
        .await
        .remove(0);
    assert!(!third.info.over_budget && third.info.model);
}

/// The first `n` dev prompts (under 600 characters, for speed) that the
/// first stage leaves to the transformer.
fn band_prompts(n: usize) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/routing-dev.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .filter(|t| t.len() < 600)
        .filter(|t| {
            let p = scorer().prepare(t).unwrap();
            p.rule.is_none() && scorer().score_without_model(&p).is_none()
        })
        .take(n)
        .collect()
}

#[tokio::test]
async fn with_a_budget_the_band_learns_the_transformers_tier2_share() {
    let prompts = band_prompts(150);
    assert_eq!(prompts.len(), 150);
    // A budget the transformer always meets: every band text is scored.
    let r =
        router(None, PolicyConfig::default()).with_model_budget(Some(Duration::from_secs(3600)));
    assert_eq!(r.band_threshold(), None);
    let requests: Vec<Request> = prompts.iter().map(Request::from_prompt).collect();
    let routed = r.route(&requests).await;
    let mut band: Vec<f64> = Vec::new();
    let mut tier2 = 0;
    for (prompt, routed) in prompts.iter().zip(&routed) {
        // (A prompt another test routed is a cache hit of the same head.)
        let scored = routed.info.model || routed.info.cache_hit;
        assert!(
            scored && !routed.info.over_budget,
            "{:?}",
            routed.decision.reasons
        );
        let p = scorer().prepare(prompt).unwrap();
        band.push(scorer().first_stage_score(&p).unwrap().score);
        tier2 += usize::from(routed.decision.tier == Tier::Large);
    }
    assert!(
        tier2 > 0 && tier2 < 150,
        "the transformer sent {tier2} of 150 to tier 2"
    );
    band.sort_by(f64::total_cmp);
    let expected = band[150 - tier2];
    assert_eq!(
        r.band_threshold(),
        Some(expected),
        "{tier2} of 150 to tier 2"
    );
    // The same share of the band lies at or above it.
    assert_eq!(band.iter().filter(|s| **s >= expected).count(), tier2);
}

#[tokio::test]
async fn a_router_decides_a_text_over_the_budget_by_its_warm_band() {
    // Past the 150 the band-learning test routes: no cached scores here,
    // so the first text really takes a (timed) pass.
    let prompts = &band_prompts(152)[150..];
    // A band where the transformer sent everything to tier 2: its
    // threshold is the lowest score, 0, where the routing threshold (0.65,
    // above the band) would send the budgeted text to tier 1.
    let band = Arc::new(BandShare::new(100, 1));
    let version = scorer().head().version.clone();
    for _ in 0..3 {
        band.observe(&version, 0.0, true);
    }
    let r = router(None, PolicyConfig::default())
        .with_model_budget(Some(Duration::from_nanos(1)))
        .with_band_share(band);
    // The first pass times the model (and teaches the band one text).
    let first = r
        .route(&[Request::from_prompt(&prompts[0])])
        .await
        .remove(0);
    assert!(
        first.info.model || first.info.cache_hit,
        "{:?}",
        first.decision.reasons
    );
    assert_eq!(r.band_threshold(), Some(0.0));
    let over = r
        .route(&[Request::from_prompt(&prompts[1])])
        .await
        .remove(0);
    assert!(over.info.over_budget, "{:?}", over.decision.reasons);
    assert_eq!(
        over.decision.tier,
        Tier::Large,
        "{:?}",
        over.decision.reasons
    );
    assert_eq!(over.decision.threshold, Some(0.0));
    let reason = "band_threshold=0.0000".to_string();
    assert!(
        over.decision.reasons.contains(&reason),
        "{:?}",
        over.decision.reasons
    );
}

#[test]
fn over_the_budget_the_band_threshold_decides() {
    let prompt = &band_prompts(1)[0];
    let p = scorer().prepare(prompt).unwrap();
    let first = scorer().first_stage_score(&p).unwrap();
    let at = scorer().decide_over_budget(&p, &first, Some(first.score));
    assert!(at.tier2, "{:?}", at.reasons);
    assert_eq!(at.threshold, first.score);
    let reason = format!("band_threshold={:.4}", first.score);
    assert!(at.reasons.contains(&reason), "{:?}", at.reasons);
    let above = scorer().decide_over_budget(&p, &first, Some(first.score + 1e-6));
    assert!(!above.tier2, "{:?}", above.reasons);
    // Not warm yet: the routing threshold, above the band, as before.
    let cold = scorer().decide_over_budget(&p, &first, None);
    assert!(
        !cold.tier2 && cold.threshold == scorer().threshold(),
        "{:?}",
        cold.reasons
    );
    assert!(!cold.reasons.iter().any(|r| r.starts_with("band_threshold")));
}

#[tokio::test]
async fn a_kept_share_moves_the_threshold_to_the_traffic() {
    let config = ScorerConfig {
        share: triage_complexity::share_threshold::ShareConfig {
            target: Some(0.5),
            window: 6,
            min_scores: 6,
        },
        ..ScorerConfig::default()
    };
    let r = Router::new(
        Ok(Arc::new(Scorer::new(config).unwrap())),
        None,
        4,
        1,
        PolicyConfig::default(),
        Duration::from_secs(60),
    );
    let requests: Vec<Request> = EVERYDAY.iter().map(|p| Request::from_prompt(*p)).collect();
    // Warming up: the configured 0.65 decides until the sixth score.
    let first = r.route(&requests).await;
    let warming = first.iter().filter(|d| d.decision.threshold == Some(0.65));
    assert_eq!(warming.count(), 5, "{first:?}");
    // Warm: each decision is against the share of the six scores before it.
    let again = r.route(&requests).await;
    for d in &again {
        let t = d.decision.threshold.unwrap();
        assert_ne!(t, 0.65, "{d:?}");
        assert_eq!(d.decision.tier == Tier::Large, d.decision.score >= t);
        assert!(d
            .decision
            .reasons
            .iter()
            .any(|r| r == &format!("share_threshold={t:.4}")));
    }
    // The window now holds the six scores again: half are at or above.
    let mut scores: Vec<f64> = first.iter().map(|d| d.decision.score).collect();
    scores.sort_by(|a, b| b.total_cmp(a));
    let scorer = r.scorer().unwrap();
    assert_eq!(scorer.threshold(), scores[2]);
    // A swapped-in head scores on a scale of its own: the share starts over.
    scorer.swap_head(scorer.head().head.clone()).unwrap();
    assert_eq!(scorer.threshold(), 0.65);
}
