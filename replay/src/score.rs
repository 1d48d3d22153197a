//! `triage-replay score`: the router's scoring alone over a dataset (no
//! generation, no NATS) and the threshold sweep over its scores.
//!
//! The scoring is the router's own: its [`RouterConfig`] loaded the way
//! `triage-router` loads it, its [`Router`] (validation, tenant pins and
//! tier overrides, truncation, rules, the static first stage, the MiniLM
//! embedding and head, the self-rating when enabled, blend, shadow) in
//! batches of the same size as `triage-router score`, so the scores and
//! tiers here are the ones the service decides. The sweep is
//! [`crate::report::sweep_at`] over [`triage_complexity::calibration`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use triage_complexity::calibration::{self, PgrCurve, Summary, SweepRow};
use triage_complexity::dataset::PromptRow;
use triage_complexity::scorer::{Scorer, DEFAULT_THRESHOLD};
use triage_complexity::verifier::{Verifier, VerifyConfig};
use triage_protocol::{Request, RoutingDecision, Tier};
use triage_router::config::{RouterConfig, ENV_PREFIX};
use triage_router::offline_verify::{self, Answered};
use triage_router::policy_report::PolicyReport;
use triage_router::self_rating::{LlmSelfRater, SelfRater};
use triage_router::tenancy::Binding;
use triage_router::validation::validate;
use triage_router::Router;

use crate::dataset::Row;
use crate::outcome::Outcome;
use crate::report;

/// Requests per model pass; the default of `triage-router score --batch`,
/// so both pass the same texts together (measured: other batch sizes gave
/// the same bits on 300 rows, but nothing promises that of padded batches).
pub const DEFAULT_BATCH: usize = 32;

/// The router's configuration exactly as `triage-router` reads it:
/// defaults, then the optional TOML file, then `TRIAGE_ROUTER_*`
/// variables; validated.
pub fn load_router_config(path: Option<&Path>) -> anyhow::Result<RouterConfig> {
    let config: RouterConfig = triage_runtime::load(path, ENV_PREFIX)?;
    config.validate()?;
    Ok(config)
}

/// The router `triage-router score` builds from a configuration: the
/// scorer (model, head, rules, first stage, cache) and the self-rating
/// client when enabled.
pub fn build_router(config: &RouterConfig) -> anyhow::Result<Router> {
    let scorer = Arc::new(Scorer::new(config.scoring.clone()).context("loading the scorer")?);
    let rater: Option<Arc<dyn SelfRater>> = if config.self_rating.enabled {
        Some(Arc::new(
            LlmSelfRater::new(&config.self_rating).context("self-rating client")?,
        ))
    } else {
        None
    };
    Ok(Router::new(
        Ok(scorer),
        rater,
        config.self_rating.max_concurrency,
        config.batching.model_threads,
        config.policy.clone(),
        Duration::from_secs(600),
    ))
}

/// The request the router sees for a row: its messages (or prompt), its
/// tenant and explicit tier, under the row's own id.
pub fn row_request(row: &Row) -> Request {
    Request {
        id: row.id().to_string(),
        messages: Some(row.prompt.chat_messages()),
        max_tokens: row.max_tokens,
        tenant: row.tenant.clone(),
        tier: row.tier,
        ..Request::default()
    }
}

/// One row's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The row.
    pub row: Row,
    /// The router's decision, or the validation error (code, message).
    pub decision: Result<RoutingDecision, (String, String)>,
}

impl Scored {
    /// As a replay outcome (for the report's sweep).
    pub fn outcome(&self) -> Outcome {
        let mut o = Outcome {
            id: self.row.id().to_string(),
            request_id: self.row.id().to_string(),
            label_tier: self.row.prompt.label_tier,
            small_ok: self.row.prompt.small_ok,
            large_ok: self.row.prompt.large_ok,
            ..Outcome::default()
        };
        match &self.decision {
            Ok(d) => {
                o.tier = Some(d.tier.number());
                o.score = Some(d.score);
                o.reasons = d.reasons.clone();
            }
            Err((code, message)) => {
                o.error = Some(code.clone());
                o.error_message = Some(message.clone());
            }
        }
        o
    }

    /// The line of `scores.jsonl`.
    pub fn line(&self) -> serde_json::Value {
        let id = self.row.id();
        let label = self.row.prompt.label_tier;
        match &self.decision {
            Ok(d) => {
                let mut v = json!({
                    "id": id,
                    "score": d.score,
                    "tier": d.tier,
                    "confidence": d.confidence,
                    "reasons": d.reasons,
                    "label_tier": label,
                });
                if let Some(t) = d.shadow_tier {
                    v["shadow_tier"] = json!(t);
                }
                v
            }
            Err((code, message)) => {
                json!({"id": id, "error": code, "message": message, "label_tier": label})
            }
        }
    }
}

/// Routes every row with `router`, `batch` rows per model pass, in file
/// order, as `triage-router score` does: invalid requests get the
/// router's validation error and are not scored.
pub async fn score_rows(router: &Router, rows: &[Row], batch: usize) -> Vec<Scored> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch.max(1)) {
        let mut decisions: Vec<Option<Result<RoutingDecision, (String, String)>>> =
            vec![None; chunk.len()];
        let mut valid: Vec<(usize, Request)> = Vec::new();
        for (k, row) in chunk.iter().enumerate() {
            let req = row_request(row);
            match validate(&req, router.policy(), Binding::Untenanted) {
                Err(rej) => decisions[k] = Some(Err((rej.code.as_str().to_string(), rej.message))),
                Ok(()) => valid.push((k, req)),
            }
        }
        let reqs: Vec<Request> = valid.iter().map(|(_, r)| r.clone()).collect();
        let routed = router.route(&reqs).await;
        for ((k, _), r) in valid.iter().zip(routed) {
            decisions[*k] = Some(Ok(r.decision));
        }
        for (row, d) in chunk.iter().zip(decisions) {
            out.push(Scored {
                row: row.clone(),
                decision: d.expect("every row decided"),
            });
        }
    }
    out
}

/// A sweep row with what it stands for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarkedRow {
    /// The numbers.
    #[serde(flatten)]
    pub row: SweepRow,
    /// `configured`, `shipped default`, `max accuracy`, `--threshold`.
    pub marks: Vec<String>,
}

/// Counts of the decisions as made (at the configured threshold).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Decided {
    /// Rows scored (valid requests).
    pub scored: usize,
    /// Rows the router rejected (see `scores.jsonl`).
    pub rejected: usize,
    /// Sent to tier 1.
    pub tier1: usize,
    /// Sent to tier 2.
    pub tier2: usize,
    /// `tier2 / scored`.
    pub tier2_share: f64,
    /// Forced to tier 2 by a rule.
    pub by_rules: usize,
    /// Settled by the static first stage.
    pub by_first_stage: usize,
    /// Not scored: a tenant pin, an explicit tier or a scoring failure
    /// decided (no threshold applied).
    pub fixed: usize,
}

/// `score-sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReport {
    /// The input file.
    pub dataset: String,
    /// Rows in the input (after `--sample`).
    pub rows: usize,
    /// `--sample` and `--seed`, when sampled.
    pub sample: Option<(usize, u64)>,
    /// Scored rows with `label_tier` (the sweep is over these).
    pub labelled: usize,
    /// The router's configured threshold.
    pub configured_threshold: f64,
    /// The threshold shipped as the default.
    pub shipped_threshold: f64,
    /// Whether the LLM self-rating took part.
    pub self_rating: bool,
    /// Tier-2 price over tier-1 price.
    pub price_ratio: f64,
    /// The decisions as made.
    pub decided: Decided,
    /// Routing accuracy of the decisions as made, over labelled rows.
    pub accuracy: Option<f64>,
    /// ROC AUC, APGR, CPT of the scores against the labels.
    pub summary: Option<Summary>,
    /// Share answered well with everything on tier 1 (rows with outcomes).
    pub quality_all_tier1: Option<f64>,
    /// Share answered well with everything on tier 2.
    pub quality_all_tier2: Option<f64>,
    /// The threshold with the best accuracy on this data.
    pub max_accuracy_threshold: Option<f64>,
    /// Scoring wall time, seconds.
    pub seconds: f64,
    /// The sweep.
    pub sweep: Vec<MarkedRow>,
    /// Pre-hoc, verify-only and combined policies at cost, over the rows
    /// with tier 1's recorded answer (`small_response`) and both outcomes.
    pub policies: Option<PolicyReport>,
}

/// Options of the sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Extra thresholds to evaluate and mark.
    pub thresholds: Vec<f64>,
    /// Tier-2 price over tier-1 price.
    pub price_ratio: f64,
}

/// The report over scored rows.
#[allow(clippy::too_many_arguments)]
pub fn build_report(
    dataset: &str,
    sample: Option<(usize, u64)>,
    scored: &[Scored],
    configured_threshold: f64,
    self_rating: bool,
    opts: &SweepOptions,
    seconds: f64,
) -> ScoreReport {
    let outcomes: Vec<Outcome> = scored.iter().map(Scored::outcome).collect();
    let mut decided = Decided::default();
    for s in scored {
        match &s.decision {
            Err(_) => decided.rejected += 1,
            Ok(d) => {
                decided.scored += 1;
                match d.tier {
                    Tier::Small => decided.tier1 += 1,
                    Tier::Large => decided.tier2 += 1,
                }
                let has = |p: &str| d.reasons.iter().any(|r| r.starts_with(p));
                decided.by_rules += usize::from(has("rule:"));
                decided.by_first_stage += usize::from(has("first_stage="));
                decided.fixed += usize::from(d.threshold.is_none());
            }
        }
    }
    decided.tier2_share = if decided.scored > 0 {
        decided.tier2 as f64 / decided.scored as f64
    } else {
        0.0
    };
    let labelled: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.score.is_some() && o.label_tier.is_some())
        .collect();
    let scores: Vec<f64> = labelled.iter().filter_map(|o| o.score).collect();
    let labels: Vec<calibration::Outcome> = labelled.iter().map(|o| report::label_of(o)).collect();
    let correct = labelled.iter().filter(|o| o.tier == o.label_tier).count();
    let have_labels = !labelled.is_empty();
    let curve = PgrCurve::new(&scores, &labels);
    let max_acc = have_labels.then(|| calibration::threshold_max_accuracy(&scores, &labels));
    let mut thresholds: Vec<f64> = (0..=20).map(|i| f64::from(i) / 20.0).collect();
    thresholds.push(configured_threshold);
    thresholds.extend(&opts.thresholds);
    thresholds.extend(max_acc);
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    let sweep = report::sweep_at(&outcomes, &thresholds, opts.price_ratio)
        .into_iter()
        .map(|row| {
            let mut marks = Vec::new();
            if row.threshold == configured_threshold {
                marks.push("configured".to_string());
            }
            if row.threshold == DEFAULT_THRESHOLD {
                marks.push("shipped default".to_string());
            }
            if opts.thresholds.contains(&row.threshold) {
                marks.push("--threshold".to_string());
            }
            if Some(row.threshold) == max_acc {
                marks.push("max accuracy".to_string());
            }
            MarkedRow { row, marks }
        })
        .collect();
    ScoreReport {
        dataset: dataset.to_string(),
        rows: scored.len(),
        sample,
        labelled: labelled.len(),
        configured_threshold,
        shipped_threshold: DEFAULT_THRESHOLD,
        self_rating,
        price_ratio: opts.price_ratio,
        decided,
        accuracy: have_labels.then(|| correct as f64 / labelled.len() as f64),
        summary: have_labels.then(|| calibration::summarise(&scores, &labels)),
        quality_all_tier1: curve.as_ref().map(|c| c.quality_small),
        quality_all_tier2: curve.as_ref().map(|c| c.quality_large),
        max_accuracy_threshold: max_acc,
        seconds,
        sweep,
        policies: None,
    }
}

/// The three policies' report over the scored rows that carry tier 1's
/// recorded answer and a label (`None` when there are none): the router's
/// scores as decided, the verify scores of the configured verifier (the
/// worker's), costs at `price_ratio`.
pub fn policies(
    router: &Router,
    verify: &VerifyConfig,
    scored: &[Scored],
    price_ratio: f64,
) -> anyhow::Result<Option<PolicyReport>> {
    let (rows, scores): (Vec<PromptRow>, Vec<f64>) = scored
        .iter()
        .filter_map(|s| {
            let d = s.decision.as_ref().ok()?;
            s.row.prompt.small_response.as_ref()?;
            s.row.prompt.outcome()?;
            Some((s.row.prompt.clone(), d.score))
        })
        .unzip();
    if rows.is_empty() {
        return Ok(None);
    }
    let Some(scorer) = router.scorer() else {
        anyhow::bail!("the verifier's report needs the router's scorer, which did not load");
    };
    let outcomes: Vec<_> = rows.iter().filter_map(PromptRow::outcome).collect();
    let answered = Answered::of(&rows, &outcomes);
    let verifier = Verifier::from_config(verify).context("loading the verifier")?;
    let (report, _, _) = offline_verify::evaluate_policies(
        scorer,
        &verifier,
        &answered,
        &scores,
        None,
        price_ratio,
    )?;
    Ok(Some(report))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "n/a".into())
}

/// The report as text for the terminal.
pub fn render_text(r: &ScoreReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Triage score sweep (the router's scoring, no generation)"
    );
    let _ = writeln!(
        s,
        "  dataset    {} ({} rows{}, {} scored with label_tier)",
        r.dataset,
        r.rows,
        r.sample.map_or(String::new(), |(n, seed)| format!(
            ", sample of {n} seed {seed}"
        )),
        r.labelled
    );
    let _ = writeln!(
        s,
        "  router     threshold {}{}; self-rating {}; scored in {:.1} s ({:.1} rows/s)",
        r.configured_threshold,
        if r.configured_threshold == r.shipped_threshold {
            " (the shipped default)".to_string()
        } else {
            format!(" (shipped default {})", r.shipped_threshold)
        },
        if r.self_rating { "on" } else { "off" },
        r.seconds,
        r.decided.scored as f64 / r.seconds.max(1e-9)
    );
    let d = &r.decided;
    let _ = writeln!(
        s,
        "  decided    tier 1: {}, tier 2: {} ({} on tier 2; {} by rules, {} settled by the first stage, {} not scored (pin, override, failure)); {} rejected",
        d.tier1,
        d.tier2,
        pct(d.tier2_share),
        d.by_rules,
        d.by_first_stage,
        d.fixed,
        d.rejected
    );
    if let Some(acc) = r.accuracy {
        let _ = writeln!(s, "  routing    accuracy {} as decided", pct(acc));
    }
    if let Some(q) = r.summary {
        let _ = writeln!(
            s,
            "  scores     ROC AUC {} | APGR {} | CPT(50%) {} | CPT(80%) {}",
            opt(q.auc, |x| format!("{x:.3}")),
            opt(q.apgr, |x| format!("{x:.3}")),
            opt(q.cpt50, pct),
            opt(q.cpt80, pct)
        );
    }
    if let (Some(a), Some(b)) = (r.quality_all_tier1, r.quality_all_tier2) {
        let _ = writeln!(
            s,
            "  quality    all tier 1 {}, all tier 2 {} (answered well, per small_ok/large_ok)",
            pct(a),
            pct(b)
        );
    }
    if r.sweep.is_empty() {
        let _ = writeln!(
            s,
            "\nno threshold sweep: no scored row has label_tier (1 or 2)"
        );
        return s;
    }
    let _ = writeln!(
        s,
        "\n  threshold  tier-2 share  accuracy  cost vs all tier 2 (x{})     PGR",
        r.price_ratio
    );
    for m in &r.sweep {
        let row = &m.row;
        let _ = writeln!(
            s,
            "  {:>9}  {:>12}  {:>8}  {:>24}  {:>6}{}",
            if row.threshold > 1.0 {
                // Above every score (max accuracy with everything on tier 1).
                "above 1".to_string()
            } else {
                format!("{:.4}", row.threshold)
            },
            pct(row.tier2_share),
            pct(row.accuracy),
            pct(row.relative_cost),
            opt(row.pgr, |x| format!("{x:.3}")),
            if m.marks.is_empty() {
                String::new()
            } else {
                format!("  <- {}", m.marks.join(", "))
            }
        );
    }
    if let Some(p) = &r.policies {
        s.push_str(&p.render());
    }
    s
}

/// Writes `score-sweep.json` and `scores.jsonl` into `dir`.
pub fn write_out(dir: &Path, report: &ScoreReport, scored: &[Scored]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    let path = dir.join("score-sweep.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    let mut lines = String::new();
    for s in scored {
        lines.push_str(&s.line().to_string());
        lines.push('\n');
    }
    let path = dir.join("scores.jsonl");
    std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Times [`score_rows`].
pub async fn score_timed(router: &Router, rows: &[Row], batch: usize) -> (Vec<Scored>, f64) {
    let started = Instant::now();
    let scored = score_rows(router, rows, batch).await;
    (scored, started.elapsed().as_secs_f64())
}
