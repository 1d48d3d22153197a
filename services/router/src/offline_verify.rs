//! The verifier's offline side: `train-verifier` (fit the head on tier 1's
//! recorded answers against `small_ok`, choose the combined policy's
//! thresholds on the training file) and the cost-honest report of the
//! three policies that `calibrate` prints for any labelled file with
//! `small_response`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::policy_report::{fmt, PolicyReport};
use crate::verifier_fit::{fit_heads, HeadsToFit};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use triage_complexity::calibration::Outcome;
use triage_complexity::cascade::{policy_outcome, verify_threshold_for_cost};
use triage_complexity::dataset::{read_rows, PromptRow};
use triage_complexity::head::{cross_validated_scores, stratified_folds};
use triage_complexity::question_kind::QuestionKind;
use triage_complexity::scorer::{Prepared, Scorer};
use triage_complexity::vector_file::read_vectors;
use triage_complexity::verifier::{
    tail_tokens, AnswerToVerify, PolicyShares, Verifier, VerifierFile, VerifierInput,
    VERIFIER_FORMAT,
};

/// Answers embedded per model call.
const CHUNK: usize = 64;

pub use crate::policy_report::HARD_GRID;

/// Rows with a recorded tier-1 answer and a label.
pub struct Answered {
    /// The rows.
    pub rows: Vec<PromptRow>,
    /// Their outcomes.
    pub outcomes: Vec<Outcome>,
    /// The text the router scores (the question).
    pub questions: Vec<String>,
}

impl Answered {
    /// The rows of `rows` (with `outcomes`) that have a `small_response`.
    pub fn of(rows: &[PromptRow], outcomes: &[Outcome]) -> Self {
        let (rows, outcomes): (Vec<PromptRow>, Vec<Outcome>) = rows
            .iter()
            .zip(outcomes)
            .filter(|(r, _)| r.small_response.is_some())
            .map(|(r, o)| (r.clone(), *o))
            .unzip();
        let questions = rows.iter().map(PromptRow::text).collect();
        Self {
            rows,
            outcomes,
            questions,
        }
    }

    /// Keeps the first `n` rows.
    pub fn truncate(&mut self, n: usize) {
        self.rows.truncate(n);
        self.outcomes.truncate(n);
        self.questions.truncate(n);
    }

    fn answer(&self, i: usize) -> &str {
        self.rows[i].small_response.as_deref().unwrap_or_default()
    }

    /// "Poor" labels: the small model did not answer well.
    fn poor(&self) -> Vec<bool> {
        self.outcomes
            .iter()
            .map(|o| o.small_ok == Some(false))
            .collect()
    }
}

/// The answer-tail vectors of `data`, read from `path` (written by
/// `export_embeddings --answers`, checked against the truncation) or
/// computed with the model in f32 (as the worker embeds them).
pub fn answer_vectors(
    scorer: &Scorer,
    data: &Answered,
    path: Option<&Path>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let tokens = (0..data.rows.len())
        .map(|i| tail_tokens(scorer.truncator(), data.answer(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(path) = path else {
        let started = Instant::now();
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(CHUNK) {
            let ids: Vec<&[u32]> = chunk.iter().map(|t| t.ids.as_slice()).collect();
            out.extend(scorer.f32_model()?.embed(&ids)?);
            eprint!(
                "\rembedded {}/{} answers ({:.0} s)",
                out.len(),
                tokens.len(),
                started.elapsed().as_secs_f64()
            );
        }
        eprintln!();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "embedded {} answer tails in {secs:.1} s ({:.1} answers/s, mean {:.0} tokens)",
            out.len(),
            out.len() as f64 / secs.max(1e-9),
            tokens.iter().map(|t| t.ids.len()).sum::<usize>() as f64 / tokens.len().max(1) as f64
        );
        return Ok(out);
    };
    let mut by_id: HashMap<String, _> = read_vectors(path)?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut out = Vec::with_capacity(tokens.len());
    for (row, t) in data.rows.iter().zip(&tokens) {
        let Some(v) = by_id.remove(&row.id) else {
            bail!("{}: no answer vector for row {:?}", path.display(), row.id);
        };
        if v.ntok != t.ids.len() || v.v.len() != scorer.model().dim() {
            bail!(
                "{}: row {:?}'s answer was embedded with {} tokens and {} dimensions, the verifier keeps {} and the model gives {}: embed again",
                path.display(), row.id, v.ntok, v.v.len(), t.ids.len(), scorer.model().dim()
            );
        }
        out.push(v.v);
    }
    println!("read {} answer vectors from {}", out.len(), path.display());
    Ok(out)
}

/// The verifier's inputs for every row.
fn verifier_inputs(
    input: VerifierInput,
    data: &Answered,
    vectors: Option<&[Vec<f32>]>,
) -> Vec<Vec<f32>> {
    (0..data.rows.len())
        .map(|i| {
            let v = vectors.map(|vs| vs[i].as_slice());
            input.build(&data.questions[i], data.answer(i), &[], v)
        })
        .collect()
}

/// Verify scores of every row with `verifier`.
pub fn verify_scores(
    verifier: &Verifier,
    data: &Answered,
    vectors: Option<&[Vec<f32>]>,
) -> Vec<f64> {
    (0..data.rows.len())
        .map(|i| {
            let v = vectors.map(|vs| vs[i].as_slice());
            verifier.score(&data.questions[i], data.answer(i), &[], v)
        })
        .collect()
}

/// Verify scores for a batch of answers to questions (the `score` command).
pub fn score_answers(
    verifier: &Verifier,
    scorer: &Scorer,
    items: &[AnswerToVerify],
) -> anyhow::Result<Vec<f64>> {
    // In f32, as the worker embeds answers, whatever the router computes
    // in (loading an f32 model only for a verifier that embeds).
    let model = if verifier.needs_embedding() {
        scorer.f32_model()?
    } else {
        scorer.model()
    };
    Ok(verifier.score_batch(model, scorer.truncator(), items)?)
}

/// Options of `train-verifier`.
#[derive(Debug, Clone)]
pub struct TrainVerifierOptions {
    /// Labelled JSONL with `small_response`.
    pub input: PathBuf,
    /// Where the verifier file goes.
    pub output: PathBuf,
    /// Answer-tail vectors (`export_embeddings --answers`).
    pub answer_vectors: Option<PathBuf>,
    /// Cross-validation folds.
    pub folds: usize,
    /// Seed of the folds.
    pub seed: u64,
    /// L2 penalties to try; the best cross-validated AUC is kept.
    pub l2_grid: Vec<f64>,
    /// Feed the head the answer-tail embedding.
    pub embedding: bool,
    /// Feed the head the answer checks and the question's prompt form.
    pub checks: bool,
    /// The cost (relative to all tier 2) the thresholds are chosen for.
    pub target_cost: f64,
    /// Tier-2 price over tier-1 price.
    pub price_ratio: f64,
    /// Train on the first N answered rows only (the file is in random
    /// order; embedding every answer takes long on small machines).
    pub limit: Option<usize>,
    /// Fit on "rescuable" (`label_tier` 2: tier 1 wrong and tier 2 right)
    /// instead of "poor" (tier 1 wrong).
    pub rescuable: bool,
    /// A head per question kind (multiple choice, numeric, open) where the
    /// kind has enough answers, beside the general head.
    pub kind_heads: bool,
    /// Write each row's out-of-fold verify score, router score and kind.
    pub scores_out: Option<PathBuf>,
}

/// The router's score on the training file without its own training
/// optimism: the first stage's head cross-validated on the file, rules
/// applied (the transformer's vectors of 11k prompts are not needed).
fn router_proxy(
    scorer: &Scorer,
    data: &Answered,
    folds: usize,
    seed: u64,
) -> anyhow::Result<Vec<f64>> {
    let Some(fs) = scorer.first_stage() else {
        bail!("train-verifier needs the first stage (scoring.first_stage.enabled) for the router's score");
    };
    let prepared: Vec<Prepared> = data
        .questions
        .iter()
        .map(|q| scorer.prepare(q))
        .collect::<Result<_, _>>()?;
    let xs: Vec<Vec<f32>> = prepared
        .iter()
        .map(|p| fs.features(&p.tokens.ids, &p.tokens.text))
        .collect();
    let ys: Vec<bool> = data.outcomes.iter().map(|o| o.tier2).collect();
    let f = stratified_folds(&ys, folds, seed);
    let scores = cross_validated_scores(&xs, &ys, &f, fs.head().fit_options());
    Ok(scores
        .iter()
        .zip(&prepared)
        .map(|(s, p)| if p.rule.is_some() { 1.0 } else { *s })
        .collect())
}

/// `train-verifier`: fits the head with cross-validation, picks the
/// combined policy's thresholds for the target cost from out-of-fold
/// scores, and writes the verifier file.
pub fn train_verifier(scorer: &Scorer, opts: &TrainVerifierOptions) -> anyhow::Result<()> {
    if opts.l2_grid.is_empty() {
        bail!("--l2 needs at least one value");
    }
    let rows = read_rows(&opts.input)?;
    let outcomes = rows
        .iter()
        .map(|r| {
            r.outcome()
                .with_context(|| format!("row {:?} has no label_tier", r.id))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut data = Answered::of(&rows, &outcomes);
    if let Some(n) = opts.limit.filter(|n| *n < data.rows.len()) {
        data.truncate(n);
        println!("training on the first {n} answered rows (--limit)");
    }
    let poor: Vec<bool> = if opts.rescuable {
        data.outcomes.iter().map(|o| o.tier2).collect()
    } else {
        data.poor()
    };
    println!(
        "{}: {} rows, {} with small_response, {} {} ({:.1}%)",
        opts.input.display(),
        rows.len(),
        data.rows.len(),
        poor.iter().filter(|p| **p).count(),
        if opts.rescuable { "rescuable" } else { "poor" },
        100.0 * poor.iter().filter(|p| **p).count() as f64 / data.rows.len().max(1) as f64
    );
    let input = VerifierInput {
        checks: opts.checks,
        question_form: opts.checks,
        logprobs: false,
        embedding: opts.embedding,
    };
    let vectors = if opts.embedding {
        Some(answer_vectors(
            scorer,
            &data,
            opts.answer_vectors.as_deref(),
        )?)
    } else {
        None
    };
    let xs = verifier_inputs(input, &data, vectors.as_deref());
    let tier2: Vec<bool> = data.outcomes.iter().map(|o| o.tier2).collect();
    let kinds: Vec<QuestionKind> = data.questions.iter().map(|q| QuestionKind::of(q)).collect();
    let tag = input.tag();
    let fitted = fit_heads(&HeadsToFit {
        xs: &xs,
        ys: &poor,
        tier2: &tier2,
        kinds: opts.kind_heads.then_some(kinds.as_slice()),
        folds: opts.folds,
        seed: opts.seed,
        l2_grid: &opts.l2_grid,
        tag: &tag,
    });
    let router = router_proxy(scorer, &data, opts.folds, opts.seed)?;
    if let Some(path) = &opts.scores_out {
        write_scores(path, &data, &fitted.cv_scores, &router, &kinds)?;
    }
    let (hard, verify_t, policies) =
        choose_policy(&router, &fitted.cv_scores, &data.outcomes, opts);
    let mut head = fitted.head;
    let mut training = json!({
        "command": format!(
            "triage-router train-verifier --input {} --folds {} --seed {} --l2 {} --target-cost {} --price-ratio {}{}{}{}{}{}",
            opts.input.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
            opts.folds, opts.seed,
            opts.l2_grid.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","),
            opts.target_cost, opts.price_ratio,
            opts.limit.map(|l| format!(" --limit {l}")).unwrap_or_default(),
            if opts.embedding { "" } else { " --no-embedding" },
            if opts.checks { "" } else { " --no-checks" },
            if opts.kind_heads { "" } else { " --one-head" },
            if opts.rescuable { " --rescuable" } else { "" },
        ),
        "label": if opts.rescuable { "rescuable = label_tier is 2" } else { "poor = small_ok is false" },
        "rows": data.rows.len(),
        "router_score_for_thresholds": "first stage cross-validated on the input, rules applied",
        "policies_at_target_cost": policies,
    });
    if let (Value::Object(t), Value::Object(r)) = (&mut training, fitted.report) {
        t.extend(r);
    }
    head.training = Some(training);
    let shares = training_shares(&router, &fitted.cv_scores, &data.outcomes, hard, verify_t);
    let file = VerifierFile {
        format: VERIFIER_FORMAT.into(),
        hard_threshold: hard,
        verify_threshold: verify_t,
        shares,
        head,
        kind_heads: fitted.kind_heads,
    };
    Verifier::new(file.clone(), "trained")?;
    let mut text = serde_json::to_string_pretty(&file)?;
    text.push('\n');
    if let Some(dir) = opts.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.output, text)
        .with_context(|| format!("writing {}", opts.output.display()))?;
    println!(
        "wrote {}: hard_threshold {hard}, verify_threshold {verify_t:.4}",
        opts.output.display()
    );
    if let Some(s) = shares {
        println!(
            "to keep these shares live instead of the scores: router scoring.share.target = {}, tier-1 workers verify.share.target = {}",
            s.direct, s.escalated_of_verified
        );
    }
    Ok(())
}

/// One line per answered row: its id, out-of-fold verify score, the
/// router score the thresholds are chosen with, and the question's kind.
fn write_scores(
    path: &Path,
    data: &Answered,
    verify: &[f64],
    router: &[f64],
    kinds: &[QuestionKind],
) -> anyhow::Result<()> {
    let mut text = String::new();
    for (((row, v), r), k) in data.rows.iter().zip(verify).zip(router).zip(kinds) {
        let line = json!({"id": row.id, "verify": v, "router": r, "kind": k});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {} rows' scores to {}",
        data.rows.len(),
        path.display()
    );
    Ok(())
}

/// The shares the chosen thresholds keep on the training rows (rounded to
/// four decimals, as they are typed into a configuration); `None` when
/// either is not a share a threshold can keep (none or all).
fn training_shares(
    router: &[f64],
    verify: &[f64],
    outcomes: &[Outcome],
    hard: f64,
    verify_t: f64,
) -> Option<PolicyShares> {
    // Shares only: the price ratio moves the cost, not who goes where.
    let at = policy_outcome(router, verify, outcomes, hard, verify_t, 1.0);
    let round = |v: f64| (v * 1e4).round() / 1e4;
    let shares = PolicyShares {
        direct: round(at.direct_share),
        escalated_of_verified: round(at.escalated_share / (1.0 - at.direct_share)),
    };
    let keepable = |v: f64| v > 0.0 && v < 1.0;
    (keepable(shares.direct) && keepable(shares.escalated_of_verified)).then_some(shares)
}

/// For each hard threshold of [`HARD_GRID`], the verify threshold that
/// spends the target cost and the PGR it buys on the out-of-fold scores;
/// returns the best pair and the table.
fn choose_policy(
    router: &[f64],
    verify: &[f64],
    outcomes: &[Outcome],
    opts: &TrainVerifierOptions,
) -> (f64, f64, Vec<serde_json::Value>) {
    println!(
        "combined policy at cost {} (cross-validated verify scores, first-stage router score):",
        opts.target_cost
    );
    let mut best: Option<(f64, f64, f64)> = None;
    let mut table = Vec::new();
    for hard in HARD_GRID {
        let Some(t) =
            verify_threshold_for_cost(router, verify, hard, opts.target_cost, opts.price_ratio)
        else {
            continue;
        };
        let p = policy_outcome(router, verify, outcomes, hard, t, opts.price_ratio);
        let pgr = p.pgr.unwrap_or(0.0);
        println!(
            "  hard >= {hard}: direct {:.1}%, escalated {:.1}%, cost {:.3}, PGR {pgr:.4} (verify >= {t:.4})",
            100.0 * p.direct_share,
            100.0 * p.escalated_share,
            p.cost
        );
        table.push(json!({"hard_threshold": hard, "verify_threshold": t, "outcome": p}));
        if best.is_none_or(|(_, _, b)| pgr > b) {
            best = Some((hard, t, pgr));
        }
    }
    // Tried, not shipped: escalating by the mean of the verify and router
    // scores (an answer looks poor and the prompt looks rescuable).
    let blended: Vec<f64> = verify
        .iter()
        .zip(router)
        .map(|(v, r)| (v + r) / 2.0)
        .collect();
    for hard in HARD_GRID {
        if let Some(t) =
            verify_threshold_for_cost(router, &blended, hard, opts.target_cost, opts.price_ratio)
        {
            let p = policy_outcome(router, &blended, outcomes, hard, t, opts.price_ratio);
            println!(
                "  (tried) hard >= {hard}, escalating by the mean of verify and router scores: PGR {}",
                fmt(p.pgr)
            );
        }
    }
    let (hard, t, _) = best.unwrap_or((1.01, 1.0, 0.0));
    (hard, t, table)
}

/// The verify scores of `data` (embedding the answers when the verifier
/// needs it, or reading `vectors_path`) and the three policies' report
/// against the router scores `router`; also the verify stage's time per
/// answer without the embedding, in seconds.
pub fn evaluate_policies(
    scorer: &Scorer,
    verifier: &Verifier,
    data: &Answered,
    router: &[f64],
    vectors_path: Option<&Path>,
    price_ratio: f64,
) -> anyhow::Result<(PolicyReport, Vec<f64>, f64)> {
    let vectors = if verifier.needs_embedding() {
        Some(answer_vectors(scorer, data, vectors_path)?)
    } else {
        None
    };
    let started = Instant::now();
    let verify = verify_scores(verifier, data, vectors.as_deref());
    let per_answer = started.elapsed().as_secs_f64() / data.rows.len().max(1) as f64;
    let report = PolicyReport::of(verifier, &data.outcomes, router, &verify, price_ratio);
    Ok((report, verify, per_answer))
}
