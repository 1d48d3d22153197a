//! The report: per run (the routed run and, with `--baseline`, the
//! all-tier-2 run) the tier split, routing quality against labels, latency
//! percentiles overall and per tier, throughput, errors and cost; plus the
//! threshold sweep over the routed run's scores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use triage_complexity::calibration::{self, Outcome as Labelled, Summary, SweepRow};

use crate::outcome::Outcome;
use crate::stats::{percentiles, Confusion, Percentiles};

/// Latency of one tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TierLatency {
    /// Requests answered by the tier.
    pub count: usize,
    /// Time to first token.
    pub ttft_ms: Percentiles,
    /// Time to completion.
    pub total_ms: Percentiles,
}

/// Cost of a run from the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostSummary {
    /// Requests whose cost was found.
    pub booked: usize,
    /// Total cost, USD.
    pub total: f64,
    /// Mean per booked request, USD.
    pub per_request: f64,
    /// The same tokens at tier-2 prices, USD.
    pub all_tier2_baseline: f64,
    /// `all_tier2_baseline - total`.
    pub saving: f64,
    /// Saving as a share of the baseline.
    pub saving_share: f64,
}

/// One run's numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// `routed` or `baseline`.
    pub name: String,
    /// Requests sent.
    pub sent: usize,
    /// Answered.
    pub completed: usize,
    /// Not finished (interrupted or timed out without an error reply).
    pub unfinished: usize,
    /// Errors by code.
    pub errors: BTreeMap<String, usize>,
    /// Share of sent requests that failed or did not finish.
    pub error_rate: f64,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Completed requests per second.
    pub throughput_rps: f64,
    /// Answered by tier 1.
    pub tier1: usize,
    /// Answered by tier 2.
    pub tier2: usize,
    /// `tier2 / completed`.
    pub tier2_share: f64,
    /// Requests escalated by a worker (tier 1 unavailable, low confidence).
    pub escalated: usize,
    /// Against `label_tier`, where labelled.
    pub confusion: Option<Confusion>,
    /// Routing accuracy against `label_tier`.
    pub accuracy: Option<f64>,
    /// ROC AUC, APGR, CPT of the router's scores against the labels.
    pub score_quality: Option<Summary>,
    /// Time to first token, all tiers.
    pub ttft_ms: Percentiles,
    /// Time to completion, all tiers.
    pub total_ms: Percentiles,
    /// Per tier (key 1 or 2).
    pub per_tier: BTreeMap<u8, TierLatency>,
    /// Prompt tokens of answered requests.
    pub prompt_tokens: u64,
    /// Completion tokens of answered requests.
    pub completion_tokens: u64,
    /// Cost from the ledger, when reachable.
    pub cost: Option<CostSummary>,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The input file.
    pub dataset: String,
    /// How requests were sent, in words.
    pub mode: String,
    /// Where requests went (NATS URL and prefix).
    pub target: String,
    /// When the report was made, Unix ms.
    pub generated_at_ms: u64,
    /// The runs.
    pub runs: Vec<RunReport>,
    /// The routed run's scores swept over thresholds (labelled data only).
    pub sweep: Vec<SweepRow>,
    /// Notes: what could not be measured and why.
    pub notes: Vec<String>,
}

/// Builds a run's numbers from its outcomes.
pub fn summarise_run(name: &str, outcomes: &[Outcome], wall_s: f64) -> RunReport {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok()).collect();
    let mut errors = BTreeMap::new();
    for o in outcomes {
        if let Some(code) = &o.error {
            *errors.entry(code.clone()).or_insert(0) += 1;
        }
    }
    let unfinished = outcomes
        .iter()
        .filter(|o| !o.ok() && o.error.is_none())
        .count();
    let tier1 = ok.iter().filter(|o| o.tier == Some(1)).count();
    let tier2 = ok.iter().filter(|o| o.tier == Some(2)).count();
    let lat = |sel: &dyn Fn(&Outcome) -> Option<f64>, tier: Option<u8>| {
        let v: Vec<f64> = ok
            .iter()
            .filter(|o| tier.is_none() || o.tier == tier)
            .filter_map(|o| sel(o))
            .collect();
        percentiles(&v)
    };
    let mut per_tier = BTreeMap::new();
    for t in [1u8, 2] {
        let count = ok.iter().filter(|o| o.tier == Some(t)).count();
        if count > 0 {
            per_tier.insert(
                t,
                TierLatency {
                    count,
                    ttft_ms: lat(&|o| o.ttft_ms, Some(t)),
                    total_ms: lat(&|o| o.total_ms, Some(t)),
                },
            );
        }
    }
    // Routed and labelled (a direct run has no tier to judge).
    let labelled: Vec<&Outcome> = ok
        .iter()
        .copied()
        .filter(|o| o.label_tier.is_some() && o.tier.is_some())
        .collect();
    let confusion = (!labelled.is_empty()).then(|| {
        Confusion::from_pairs(
            labelled
                .iter()
                .map(|o| (o.label_tier.unwrap(), o.tier.unwrap())),
        )
    });
    let scored: Vec<&Outcome> = labelled
        .iter()
        .copied()
        .filter(|o| o.score.is_some())
        .collect();
    let score_quality = (!scored.is_empty()).then(|| {
        let scores: Vec<f64> = scored.iter().map(|o| o.score.unwrap()).collect();
        let labels: Vec<Labelled> = scored.iter().map(|o| label_of(o)).collect();
        calibration::summarise(&scores, &labels)
    });
    let booked: Vec<&Outcome> = ok.iter().copied().filter(|o| o.cost.is_some()).collect();
    let cost = (!booked.is_empty()).then(|| {
        let total: f64 = booked.iter().filter_map(|o| o.cost).sum();
        let base: f64 = booked.iter().filter_map(|o| o.baseline_cost).sum();
        CostSummary {
            booked: booked.len(),
            total,
            per_request: total / booked.len() as f64,
            all_tier2_baseline: base,
            saving: base - total,
            saving_share: if base > 0.0 {
                (base - total) / base
            } else {
                0.0
            },
        }
    });
    let sent = outcomes.len();
    RunReport {
        name: name.to_string(),
        sent,
        completed: ok.len(),
        unfinished,
        error_rate: if sent > 0 {
            (sent - ok.len()) as f64 / sent as f64
        } else {
            0.0
        },
        errors,
        wall_s,
        throughput_rps: if wall_s > 0.0 {
            ok.len() as f64 / wall_s
        } else {
            0.0
        },
        tier1,
        tier2,
        tier2_share: if ok.is_empty() {
            0.0
        } else {
            tier2 as f64 / ok.len() as f64
        },
        escalated: ok.iter().filter(|o| o.escalated()).count(),
        accuracy: confusion.and_then(|c| c.accuracy()),
        confusion,
        score_quality,
        ttft_ms: lat(&|o| o.ttft_ms, None),
        total_ms: lat(&|o| o.total_ms, None),
        per_tier,
        prompt_tokens: ok.iter().map(|o| u64::from(o.prompt_tokens)).sum(),
        completion_tokens: ok.iter().map(|o| u64::from(o.completion_tokens)).sum(),
        cost,
    }
}

/// An outcome's label and outcomes, for [`calibration`].
pub fn label_of(o: &Outcome) -> Labelled {
    Labelled {
        tier2: o.label_tier == Some(2),
        small_ok: o.small_ok,
        large_ok: o.large_ok,
    }
}

/// The threshold sweep over the routed run's scores, where labelled.
pub fn sweep(outcomes: &[Outcome], price_ratio: f64) -> Vec<SweepRow> {
    let thresholds: Vec<f64> = (0..=20).map(|i| f64::from(i) / 20.0).collect();
    sweep_at(outcomes, &thresholds, price_ratio)
}

/// The sweep at these thresholds over the outcomes with a score and a
/// label (empty without any).
pub fn sweep_at(outcomes: &[Outcome], thresholds: &[f64], price_ratio: f64) -> Vec<SweepRow> {
    let scored: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.score.is_some() && o.label_tier.is_some())
        .collect();
    if scored.is_empty() {
        return Vec::new();
    }
    let scores: Vec<f64> = scored.iter().map(|o| o.score.unwrap()).collect();
    let labels: Vec<Labelled> = scored.iter().map(|o| label_of(o)).collect();
    calibration::sweep(&scores, &labels, thresholds, price_ratio)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "n/a".into())
}

/// The report as text for the terminal.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Triage replay report");
    let _ = writeln!(s, "  dataset: {}", report.dataset);
    let _ = writeln!(s, "  mode:    {}", report.mode);
    let _ = writeln!(s, "  target:  {}", report.target);
    for run in &report.runs {
        let _ = writeln!(s, "\n== run: {} ==", run.name);
        let _ = writeln!(
            s,
            "  requests   {} sent, {} completed, {} errors, {} unfinished ({} error rate), {:.1} s, {:.2} req/s",
            run.sent,
            run.completed,
            run.errors.values().sum::<usize>(),
            run.unfinished,
            pct(run.error_rate),
            run.wall_s,
            run.throughput_rps
        );
        if !run.errors.is_empty() {
            let list: Vec<String> = run
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "  errors     {}", list.join(", "));
        }
        if run.completed > 0 && run.tier1 + run.tier2 == 0 {
            let _ = writeln!(
                s,
                "  tier split n/a: sent straight to the server, no routing"
            );
        } else {
            let _ = writeln!(
                s,
                "  tier split tier 1: {}, tier 2: {} ({} on tier 2), escalated: {}",
                run.tier1,
                run.tier2,
                pct(run.tier2_share),
                run.escalated
            );
        }
        if let Some(c) = run.confusion {
            let _ = writeln!(
                s,
                "  routing    accuracy {} | label 2→tier 2: {}, label 2→tier 1: {}, label 1→tier 1: {}, label 1→tier 2: {}",
                opt(c.accuracy(), pct),
                c.true_tier2,
                c.false_tier1,
                c.true_tier1,
                c.false_tier2
            );
        }
        if let Some(q) = run.score_quality {
            let _ = writeln!(
                s,
                "  scores     ROC AUC {} | APGR {} | CPT(50%) {} | CPT(80%) {}",
                opt(q.auc, |x| format!("{x:.3}")),
                opt(q.apgr, |x| format!("{x:.3}")),
                opt(q.cpt50, pct),
                opt(q.cpt80, pct)
            );
        }
        let _ = writeln!(
            s,
            "  latency ms      count      p50      p95      p99      max"
        );
        let line = |label: &str, p: &Percentiles| {
            format!(
                "  {label:<14} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
                p.count, p.p50, p.p95, p.p99, p.max
            )
        };
        s.push_str(&line("ttft all", &run.ttft_ms));
        s.push_str(&line("total all", &run.total_ms));
        for (tier, l) in &run.per_tier {
            s.push_str(&line(&format!("ttft tier {tier}"), &l.ttft_ms));
            s.push_str(&line(&format!("total tier {tier}"), &l.total_ms));
        }
        let _ = writeln!(
            s,
            "  tokens     {} prompt, {} completion",
            run.prompt_tokens, run.completion_tokens
        );
        match &run.cost {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "  cost       ${:.6} for {} requests (${:.8}/request); all-tier-2 baseline ${:.6}; saving ${:.6} ({})",
                    c.total,
                    c.booked,
                    c.per_request,
                    c.all_tier2_baseline,
                    c.saving,
                    pct(c.saving_share)
                );
            }
            None => {
                let _ = writeln!(s, "  cost       not available (see notes)");
            }
        }
    }
    if report.runs.len() == 2 {
        let (a, b) = (&report.runs[0], &report.runs[1]);
        if let (Some(ca), Some(cb)) = (&a.cost, &b.cost) {
            let _ = writeln!(
                s,
                "\n== {} vs {} ==\n  cost per request ${:.8} vs ${:.8} ({} of the {} run); ttft p50 {:.1} vs {:.1} ms; total p99 {:.1} vs {:.1} ms",
                a.name,
                b.name,
                ca.per_request,
                cb.per_request,
                pct(if cb.per_request > 0.0 { ca.per_request / cb.per_request } else { 0.0 }),
                b.name,
                a.ttft_ms.p50,
                b.ttft_ms.p50,
                a.total_ms.p99,
                b.total_ms.p99
            );
        }
    }
    if !report.sweep.is_empty() {
        let _ = writeln!(s, "\n== threshold sweep (routed run's scores) ==");
        let _ = writeln!(s, "  threshold  tier-2 share  accuracy  relative cost  PGR");
        for r in report.sweep.iter().step_by(2) {
            let _ = writeln!(
                s,
                "  {:>9.2}  {:>12}  {:>8}  {:>13}  {}",
                r.threshold,
                pct(r.tier2_share),
                pct(r.accuracy),
                pct(r.relative_cost),
                opt(r.pgr, |x| format!("{x:.2}"))
            );
        }
    }
    for n in &report.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(
        id: &str,
        label: u8,
        tier: u8,
        score: f64,
        ttft: f64,
        cost: f64,
        base: f64,
    ) -> Outcome {
        Outcome {
            id: id.into(),
            request_id: format!("{id}-r"),
            label_tier: Some(label),
            small_ok: Some(label == 1),
            large_ok: Some(true),
            tier: Some(tier),
            score: Some(score),
            ttft_ms: Some(ttft),
            total_ms: Some(ttft * 10.0),
            prompt_tokens: 10,
            completion_tokens: 20,
            attempts: 1,
            cost: Some(cost),
            baseline_cost: Some(base),
            ..Outcome::default()
        }
    }

    #[test]
    fn run_summary_counts_splits_accuracy_latency_and_savings() {
        let mut outcomes = vec![
            outcome("a", 2, 2, 0.9, 10.0, 0.0012, 0.0012),
            outcome("b", 1, 1, 0.1, 20.0, 0.00015, 0.0012),
            outcome("c", 1, 2, 0.7, 30.0, 0.0012, 0.0012),
            outcome("d", 2, 1, 0.3, 40.0, 0.00015, 0.0012),
        ];
        outcomes.push(Outcome {
            id: "e".into(),
            error: Some("backend_unavailable".into()),
            ..Outcome::default()
        });
        outcomes.push(Outcome {
            id: "f".into(),
            ..Outcome::default()
        });
        outcomes[1].reasons = vec!["escalated_low_confidence".into()];
        let r = summarise_run("routed", &outcomes, 2.0);
        assert_eq!((r.sent, r.completed, r.unfinished), (6, 4, 1));
        assert_eq!(r.errors.get("backend_unavailable"), Some(&1));
        assert!((r.error_rate - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!((r.tier1, r.tier2, r.escalated), (2, 2, 1));
        assert_eq!(r.tier2_share, 0.5);
        assert_eq!(r.throughput_rps, 2.0);
        assert_eq!(r.accuracy, Some(0.5));
        let c = r.confusion.unwrap();
        assert_eq!(
            (c.true_tier2, c.false_tier2, c.true_tier1, c.false_tier1),
            (1, 1, 1, 1)
        );
        // Scores: positives 0.9, 0.3; negatives 0.1, 0.7 → wins: 0.9>0.1, 0.9>0.7, 0.3>0.1 = 3/4.
        assert_eq!(r.score_quality.unwrap().auc, Some(0.75));
        assert_eq!(r.ttft_ms.p50, 20.0);
        assert_eq!(r.per_tier[&2].ttft_ms.max, 30.0);
        assert_eq!(r.per_tier[&1].total_ms.p99, 400.0);
        assert_eq!((r.prompt_tokens, r.completion_tokens), (40, 80));
        let cost = r.cost.clone().unwrap();
        assert!((cost.total - 0.0027).abs() < 1e-12);
        assert!((cost.all_tier2_baseline - 0.0048).abs() < 1e-12);
        assert!((cost.saving_share - 0.4375).abs() < 1e-12);
        let text = render_text(&Report {
            runs: vec![r],
            ..Report::default()
        });
        assert!(text.contains("43.8%"), "{text}");
    }

    #[test]
    fn a_direct_run_has_latency_but_no_tiers_routing_or_cost() {
        let outcomes: Vec<Outcome> = (0..4)
            .map(|i| Outcome {
                id: format!("d{i}"),
                label_tier: Some(1 + (i % 2) as u8),
                ttft_ms: Some(f64::from(i) + 1.0),
                total_ms: Some(f64::from(i) + 10.0),
                completion_tokens: 7,
                attempts: 1,
                ..Outcome::default()
            })
            .collect();
        let r = summarise_run("direct", &outcomes, 1.0);
        assert_eq!((r.sent, r.completed, r.unfinished), (4, 4, 0));
        assert_eq!((r.tier1, r.tier2), (0, 0));
        assert!(r.confusion.is_none() && r.accuracy.is_none() && r.score_quality.is_none());
        assert!(r.per_tier.is_empty());
        assert_eq!((r.ttft_ms.count, r.ttft_ms.max), (4, 4.0));
        assert_eq!(r.completion_tokens, 28);
        assert!(sweep(&outcomes, 8.0).is_empty());
        let text = render_text(&Report {
            runs: vec![r],
            ..Report::default()
        });
        assert!(text.contains("tier split n/a"), "{text}");
    }

    #[test]
    fn an_empty_run_reports_zeros_not_nan() {
        let r = summarise_run("routed", &[], 0.0);
        assert_eq!(
            (r.sent, r.completed, r.error_rate, r.throughput_rps),
            (0, 0, 0.0, 0.0)
        );
        assert!(r.cost.is_none() && r.confusion.is_none());
        assert!(!render_text(&Report {
            runs: vec![r],
            ..Report::default()
        })
        .contains("NaN"));
    }
}
