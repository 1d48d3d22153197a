//! The offline commands: `train` (fit the head with cross-validation),
//! `score` (audit a JSONL of requests) and `calibrate` (measure a score on
//! labelled data and choose the threshold).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};
use triage_complexity::calibration::{self, Outcome, PgrCurve, Summary};
use triage_complexity::dataset::{read_rows, PromptRow};
use triage_complexity::head::{cross_validated_scores, stratified_folds, FitOptions, LogisticHead};
use triage_complexity::head_input::HeadInput;
use triage_complexity::scorer::{Prepared, Scorer, MINILM_FEATURES};
use triage_complexity::share_threshold::ShareConfig;
use triage_complexity::static_embedding::{
    content, default_table_path, load_or_distill, FirstStage, StaticTable, STATIC_FEATURES,
};
use triage_complexity::vector_file::read_vectors;
use triage_complexity::verifier::{AnswerToVerify, Verifier, VerifyConfig};
use triage_complexity::{MiniLm, ModelFiles};
use triage_protocol::{Request, RoutingDecision, Tier};

use crate::combined_policy::CombinedPolicy;
use crate::offline_verify::{self, Answered};
use crate::routing::Router;
use crate::self_rating::SelfRater;
use crate::tenancy::Binding;
use crate::validation::validate;

/// Texts embedded per model call offline (bounded memory, visible progress).
const OFFLINE_CHUNK: usize = 64;

/// Options of `train`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Labelled JSONL.
    pub input: PathBuf,
    /// Where the head goes.
    pub output: PathBuf,
    /// Cross-validation folds.
    pub folds: usize,
    /// Cross-validation repeats (different fold seeds), averaged.
    pub repeats: usize,
    /// Seed of the first repeat's folds.
    pub seed: u64,
    /// L2 penalties to try; the one with the best mean CV APGR is kept.
    pub l2_grid: Vec<f64>,
    /// Also build the static table (if missing) and train the first stage.
    pub first_stage: Option<PathBuf>,
    /// Precomputed MiniLM vectors of the input (`export_embeddings`), used
    /// instead of running the model.
    pub vectors: Option<PathBuf>,
    /// Train the transformer head on the first this-many rows only (the
    /// first stage always uses every row).
    pub limit: Option<usize>,
    /// Feed the heads the prompt-form features too.
    pub form: bool,
}

/// Labelled rows with their truncated inputs.
struct Labelled {
    rows: Vec<PromptRow>,
    outcomes: Vec<Outcome>,
    prepared: Vec<Prepared>,
}

fn load_labelled(scorer: &Scorer, path: &Path) -> anyhow::Result<Labelled> {
    let rows = read_rows(path)?;
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut prepared = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(o) = row.outcome() else {
            bail!("{}: row {:?} has no label_tier", path.display(), row.id);
        };
        outcomes.push(o);
        prepared.push(scorer.prepare(&row.text())?);
    }
    Ok(Labelled {
        rows,
        outcomes,
        prepared,
    })
}

impl Labelled {
    /// The first `n` rows.
    fn first(&self, n: usize) -> Labelled {
        let n = n.min(self.rows.len());
        Labelled {
            rows: self.rows[..n].to_vec(),
            outcomes: self.outcomes[..n].to_vec(),
            prepared: self.prepared[..n].to_vec(),
        }
    }
}

/// The MiniLM vectors of `data`: read from `vectors` when given (checked
/// against the ids and the truncation), else computed with the model.
fn minilm_vectors(
    model: &MiniLm,
    data: &Labelled,
    vectors: Option<&Path>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let Some(path) = vectors else {
        return embed_all(model, &data.prepared);
    };
    let mut by_id: std::collections::HashMap<String, triage_complexity::vector_file::VectorRow> =
        read_vectors(path)?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
    let mut out = Vec::with_capacity(data.rows.len());
    for (row, p) in data.rows.iter().zip(&data.prepared) {
        let Some(v) = by_id.remove(&row.id) else {
            bail!("{}: no vector for row {:?}", path.display(), row.id);
        };
        if v.ntok != p.tokens.ids.len() || v.v.len() != model.dim() {
            bail!(
                "{}: row {:?} was embedded with {} tokens and {} dimensions, the scorer keeps {} and the model gives {}: embed again",
                path.display(), row.id, v.ntok, v.v.len(), p.tokens.ids.len(), model.dim()
            );
        }
        out.push(v.v);
    }
    println!("read {} vectors from {}", out.len(), path.display());
    Ok(out)
}

/// Head inputs: each vector with the form features of its text if asked.
fn head_inputs(input: HeadInput, vectors: &[Vec<f32>], prepared: &[Prepared]) -> Vec<Vec<f32>> {
    vectors
        .iter()
        .zip(prepared)
        .map(|(v, p)| input.build(v, &p.tokens.text))
        .collect()
}

/// Embeds every prepared text with the full model, showing progress.
pub(crate) fn embed_all(model: &MiniLm, prepared: &[Prepared]) -> anyhow::Result<Vec<Vec<f32>>> {
    let started = Instant::now();
    let mut out = Vec::with_capacity(prepared.len());
    for chunk in prepared.chunks(OFFLINE_CHUNK) {
        let ids: Vec<&[u32]> = chunk.iter().map(|p| p.tokens.ids.as_slice()).collect();
        out.extend(model.embed(&ids)?);
        eprint!(
            "\rembedded {}/{} ({:.0} s)",
            out.len(),
            prepared.len(),
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    Ok(out)
}

fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.4}"))
}

fn summary_line(label: &str, s: &Summary) -> String {
    format!(
        "{label:<28} AUC {}  APGR {}  CPT(50%) {}  CPT(80%) {}",
        fmt_opt(s.auc),
        fmt_opt(s.apgr),
        fmt_opt(s.cpt50),
        fmt_opt(s.cpt80)
    )
}

/// Mean of several summaries (repeats of cross-validation).
fn mean_summary(all: &[Summary]) -> Summary {
    let mean = |f: &dyn Fn(&Summary) -> Option<f64>| {
        let v: Vec<f64> = all.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    Summary {
        n: all.first().map_or(0, |s| s.n),
        auc: mean(&|s| s.auc),
        apgr: mean(&|s| s.apgr),
        cpt50: mean(&|s| s.cpt50),
        cpt80: mean(&|s| s.cpt80),
    }
}

/// Rule-forced prompts score 1 (they go to tier 2 whatever the head says).
pub(crate) fn with_rules(scores: &[f64], prepared: &[Prepared]) -> Vec<f64> {
    scores
        .iter()
        .zip(prepared)
        .map(|(s, p)| if p.rule.is_some() { 1.0 } else { *s })
        .collect()
}

/// Cross-validated out-of-fold scores for each repeat.
fn cv_scores(
    xs: &[Vec<f32>],
    ys: &[bool],
    folds: usize,
    repeats: usize,
    seed: u64,
    l2: f64,
) -> Vec<Vec<f64>> {
    (0..repeats as u64)
        .map(|r| {
            let f = stratified_folds(ys, folds, seed + r);
            cross_validated_scores(xs, ys, &f, FitOptions::standardised(l2))
        })
        .collect()
}

/// `train`: embeds the labelled file, picks the L2 penalty by
/// cross-validated APGR, fits on everything and writes the head.
pub fn train(scorer: &Scorer, opts: &TrainOptions) -> anyhow::Result<()> {
    let data = load_labelled(scorer, &opts.input)?;
    let ys: Vec<bool> = data.outcomes.iter().map(|o| o.tier2).collect();
    let positives = ys.iter().filter(|y| **y).count();
    println!(
        "{}: {} rows, {} tier 2 ({:.1}%), truncation {} tokens, {} rule-forced",
        opts.input.display(),
        ys.len(),
        positives,
        100.0 * positives as f64 / ys.len().max(1) as f64,
        scorer.truncator().max_tokens(),
        data.prepared.iter().filter(|p| p.rule.is_some()).count()
    );
    let model_data = data.first(opts.limit.unwrap_or(usize::MAX));
    if model_data.rows.len() < data.rows.len() {
        println!(
            "transformer head: the first {} rows (--limit)",
            model_data.rows.len()
        );
    }
    let model_ys: Vec<bool> = model_data.outcomes.iter().map(|o| o.tier2).collect();
    let vectors = minilm_vectors(scorer.model(), &model_data, opts.vectors.as_deref())?;
    let input = HeadInput {
        vector: MINILM_FEATURES,
        form: opts.form,
    };
    let xs = head_inputs(input, &vectors, &model_data.prepared);
    let (best, grid) = fit_grid(&xs, &model_ys, &model_data, opts, "embedding head")?;
    let head = finish_head(
        &xs,
        &model_ys,
        &input.tag(),
        best,
        grid,
        opts,
        scorer,
        &model_data,
    )?;
    write_head(&head, &opts.output)?;
    println!("wrote {}", opts.output.display());

    if let Some(static_out) = &opts.first_stage {
        let full = FullHead {
            xs: &xs,
            data: &model_data,
            l2: head.l2,
        };
        train_first_stage(scorer, opts, &data, &full, static_out)?;
    }
    Ok(())
}

/// The transformer head's inputs and rows, for the two-stage comparison.
struct FullHead<'a> {
    xs: &'a [Vec<f32>],
    data: &'a Labelled,
    l2: f64,
}

type GridResult = (f64, Vec<serde_json::Value>);

fn fit_grid(
    xs: &[Vec<f32>],
    ys: &[bool],
    data: &Labelled,
    opts: &TrainOptions,
    label: &str,
) -> anyhow::Result<GridResult> {
    if opts.l2_grid.is_empty() {
        bail!("--l2 needs at least one value");
    }
    println!(
        "{label}: {}-fold cross-validation x {} repeats (seeds {}..)",
        opts.folds, opts.repeats, opts.seed
    );
    let mut best: Option<(f64, f64)> = None;
    let mut grid = Vec::new();
    for &l2 in &opts.l2_grid {
        let runs = cv_scores(xs, ys, opts.folds, opts.repeats, opts.seed, l2);
        let alone = mean_summary(
            &runs
                .iter()
                .map(|s| calibration::summarise(s, &data.outcomes))
                .collect::<Vec<_>>(),
        );
        let ruled = mean_summary(
            &runs
                .iter()
                .map(|s| calibration::summarise(&with_rules(s, &data.prepared), &data.outcomes))
                .collect::<Vec<_>>(),
        );
        println!("  {}", summary_line(&format!("l2={l2}"), &alone));
        println!("  {}", summary_line(&format!("l2={l2} + rules"), &ruled));
        grid.push(json!({"l2": l2, "head": alone, "head_with_rules": ruled}));
        let apgr = alone.apgr.unwrap_or(0.0);
        if best.is_none_or(|(_, b)| apgr > b) {
            best = Some((l2, apgr));
        }
    }
    let (l2, _) = best.expect("grid is not empty");
    println!("{label}: chose l2={l2} (best mean cross-validated APGR)");
    Ok((l2, grid))
}

#[allow(clippy::too_many_arguments)]
fn finish_head(
    xs: &[Vec<f32>],
    ys: &[bool],
    features: &str,
    l2: f64,
    grid: Vec<serde_json::Value>,
    opts: &TrainOptions,
    scorer: &Scorer,
    data: &Labelled,
) -> anyhow::Result<LogisticHead> {
    let mut head = LogisticHead::fit(xs, ys, features, FitOptions::standardised(l2));
    let in_sample: Vec<f64> = xs.iter().map(|x| head.score(x)).collect();
    head.training = Some(json!({
        "command": format!(
            "triage-router train --input {} --folds {} --repeats {} --seed {} --l2 {}{}{}",
            opts.input.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
            opts.folds, opts.repeats, opts.seed,
            opts.l2_grid.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","),
            opts.limit.map(|l| format!(" --limit {l}")).unwrap_or_default(),
            if opts.form { "" } else { " --no-form" },
        ),
        "input_sha256": file_sha256(&opts.input)?,
        "rows": ys.len(),
        "tier2_rows": ys.iter().filter(|y| **y).count(),
        "max_tokens": scorer.truncator().max_tokens(),
        "chosen_l2": l2,
        "cross_validation": grid,
        "in_sample": calibration::summarise(&in_sample, &data.outcomes),
    }));
    Ok(head)
}

fn write_head(head: &LogisticHead, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = serde_json::to_string_pretty(head)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Builds the static table if missing, trains the first-stage head on
/// every row, and evaluates the two-stage score against the full model on
/// the rows both heads saw.
fn train_first_stage(
    scorer: &Scorer,
    opts: &TrainOptions,
    data: &Labelled,
    full: &FullHead,
    out: &Path,
) -> anyhow::Result<()> {
    let files = scorer
        .config()
        .model_dir
        .clone()
        .map(ModelFiles::new)
        .unwrap_or_else(ModelFiles::default_minilm);
    let path = default_table_path(&files);
    if !path.is_file() {
        eprintln!(
            "distilling the static token table into {} ...",
            path.display()
        );
    }
    let started = Instant::now();
    let table = load_or_distill(scorer.model(), &files, &path)?;
    eprintln!(
        "static token table ready ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let input = HeadInput {
        vector: STATIC_FEATURES,
        form: opts.form,
    };
    let static_xs = static_inputs(&table, input, &data.prepared);
    let ys: Vec<bool> = data.outcomes.iter().map(|o| o.tier2).collect();
    let (l2, grid) = fit_grid(&static_xs, &ys, data, opts, "static first stage")?;
    let head = finish_head(&static_xs, &ys, &input.tag(), l2, grid, opts, scorer, data)?;
    write_head(&head, out)?;
    println!("wrote {}", out.display());
    let n = full.data.rows.len();
    compare_stages(opts, full, &static_xs[..n], l2);
    let fs = FirstStage::new(table, head, 0.0, 1.0)?;
    print_speed(scorer, &fs, &data.prepared)
}

/// The first stage's inputs: static vectors, with form features if asked.
fn static_inputs(table: &StaticTable, input: HeadInput, prepared: &[Prepared]) -> Vec<Vec<f32>> {
    prepared
        .iter()
        .map(|p| input.build(&table.embed(content(&p.tokens.ids)), &p.tokens.text))
        .collect()
}

/// Two-stage quality, cross-validated: both heads out-of-fold on the same
/// folds; the static score settles outside the band.
fn compare_stages(opts: &TrainOptions, full: &FullHead, static_xs: &[Vec<f32>], l2: f64) {
    let data = full.data;
    let ys: Vec<bool> = data.outcomes.iter().map(|o| o.tier2).collect();
    let (k, r, seed) = (opts.folds, opts.repeats, opts.seed);
    let full_runs = cv_scores(full.xs, &ys, k, r, seed, full.l2);
    let static_runs = cv_scores(static_xs, &ys, k, r, seed, l2);
    let mean_of = |runs: &[Vec<f64>]| {
        mean_summary(
            &runs
                .iter()
                .map(|s| calibration::summarise(s, &data.outcomes))
                .collect::<Vec<_>>(),
        )
    };
    println!("{}", summary_line("full model (CV)", &mean_of(&full_runs)));
    println!(
        "{}",
        summary_line("static stage alone (CV)", &mean_of(&static_runs))
    );
    for (lower, upper) in [
        (0.1, 0.9),
        (0.2, 0.8),
        (0.3, 0.7),
        (0.35, 0.65),
        (0.3, 0.5),
        (0.35, 0.55),
        (0.4, 0.6),
        (0.45, 0.65),
        (0.5, 0.7),
    ] {
        let settles = |s: f64| s < lower || s >= upper;
        let combined: Vec<Vec<f64>> = full_runs
            .iter()
            .zip(&static_runs)
            .map(|(f, s)| {
                f.iter()
                    .zip(s)
                    .map(|(f, s)| if settles(*s) { *s } else { *f })
                    .collect()
            })
            .collect();
        let settled = static_runs[0].iter().filter(|s| settles(**s)).count();
        println!(
            "{}  ({:.1}% settled by the first stage)",
            summary_line(
                &format!("two-stage band [{lower}, {upper})"),
                &mean_of(&combined)
            ),
            100.0 * settled as f64 / ys.len().max(1) as f64
        );
    }
}

/// Speed on these prompts: static lookup vs the transformer.
fn print_speed(scorer: &Scorer, fs: &FirstStage, prepared: &[Prepared]) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut sink = 0.0;
    for p in prepared {
        sink += fs.score(&p.tokens.ids, &p.tokens.text);
    }
    let static_rate = prepared.len() as f64 / started.elapsed().as_secs_f64();
    let sample: Vec<&Prepared> = prepared.iter().take(256).collect();
    let started = Instant::now();
    for chunk in sample.chunks(16) {
        let ids: Vec<&[u32]> = chunk.iter().map(|p| p.tokens.ids.as_slice()).collect();
        sink += scorer.model().embed(&ids)?.len() as f64;
    }
    let model_rate = sample.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "speed on these prompts: static first stage {static_rate:.0}/s, full model {model_rate:.1}/s (batches of 16), {:.0}x (checksum {sink:.3})",
        static_rate / model_rate
    );
    Ok(())
}

/// One line of `score` output.
fn score_line(
    id: &str,
    routed: Result<&triage_protocol::RoutingDecision, (&str, &str)>,
) -> serde_json::Value {
    match routed {
        Ok(d) => {
            let mut v = json!({
                "id": id,
                "score": d.score,
                "tier": d.tier,
                "confidence": d.confidence,
                "reasons": d.reasons,
            });
            if let Some(t) = d.shadow_tier {
                v["shadow_tier"] = json!(t);
            }
            v
        }
        Err((code, message)) => json!({"id": id, "error": code, "message": message}),
    }
}

/// `score`: routes every request of a JSONL file offline with the service's
/// code and configuration; writes one line per input and prints the split.
/// Lines with `small_response` also get the verifier's fields.
pub async fn score(
    router: &Router,
    verifier: &Verifier,
    verify_share: &ShareConfig,
    input: &Path,
    output: &Path,
    batch: usize,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let mut requests: Vec<(usize, Result<Request, String>)> = Vec::new();
    let mut responses: Vec<Option<String>> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parsed = serde_json::from_str::<Request>(line)
            .map_err(|e| format!("{}:{}: {e}", input.display(), i + 1));
        requests.push((i + 1, parsed));
        responses.push(small_response(line));
    }
    let mut out = BufWriter::new(
        std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?,
    );
    let (mut tier1, mut tier2, mut errors) = (0usize, 0usize, 0usize);
    let mut rule_forced = 0usize;
    let scoring_share = router
        .scorer()
        .map(|s| s.config().share.clone())
        .unwrap_or_default();
    let policy = CombinedPolicy::new(verifier, &scoring_share, verify_share);
    let started = Instant::now();
    for (chunk, responses) in requests
        .chunks(batch.max(1))
        .zip(responses.chunks(batch.max(1)))
    {
        let mut valid = Vec::new();
        let mut lines: Vec<Option<serde_json::Value>> = vec![None; chunk.len()];
        for (k, (_, r)) in chunk.iter().enumerate() {
            match r {
                Err(e) => {
                    lines[k] = Some(json!({"id": null, "error": "invalid_request", "message": e}));
                    errors += 1;
                }
                Ok(req) => match validate(req, router.policy(), Binding::Untenanted) {
                    Err(rej) => {
                        lines[k] =
                            Some(score_line(&req.id, Err((rej.code.as_str(), &rej.message))));
                        errors += 1;
                    }
                    Ok(()) => valid.push((k, req.clone())),
                },
            }
        }
        let reqs: Vec<Request> = valid.iter().map(|(_, r)| r.clone()).collect();
        let routed = router.route(&reqs).await;
        for ((k, req), r) in valid.iter().zip(&routed) {
            match r.decision.tier {
                Tier::Small => tier1 += 1,
                Tier::Large => tier2 += 1,
            }
            rule_forced += usize::from(r.decision.reasons.iter().any(|x| x.starts_with("rule:")));
            lines[*k] = Some(score_line(&req.id, Ok(&r.decision)));
        }
        let answers: Vec<(usize, String, String, &RoutingDecision)> = valid
            .iter()
            .zip(&routed)
            .filter_map(|((k, req), r)| {
                let answer = responses[*k].clone()?;
                let question = triage_complexity::prompt_text::text_to_score(&req.chat_messages());
                Some((*k, question, answer, &r.decision))
            })
            .collect();
        add_verify_fields(router, verifier, &policy, &answers, &mut lines)?;
        for line in lines.into_iter().flatten() {
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    let total = (tier1 + tier2).max(1) as f64;
    println!(
        "scored {} requests in {:.1} s: tier 1 {} ({:.1}%), tier 2 {} ({:.1}%; {} by rules), errors {}",
        tier1 + tier2,
        started.elapsed().as_secs_f64(),
        tier1,
        100.0 * tier1 as f64 / total,
        tier2,
        100.0 * tier2 as f64 / total,
        rule_forced,
        errors
    );
    println!("wrote {}", output.display());
    Ok(())
}

/// The `small_response` (tier 1's answer) of an input line, if it has one.
fn small_response(line: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        small_response: Option<String>,
    }
    serde_json::from_str::<Answer>(line).ok()?.small_response
}

/// Adds `verify_score` and `verify_tier` to the lines of answered requests
/// `(line index, question, answer, routing decision)`.
fn add_verify_fields(
    router: &Router,
    verifier: &Verifier,
    policy: &CombinedPolicy,
    answers: &[(usize, String, String, &RoutingDecision)],
    lines: &mut [Option<serde_json::Value>],
) -> anyhow::Result<()> {
    if answers.is_empty() {
        return Ok(());
    }
    let Some(scorer) = router.scorer() else {
        bail!("the scorer failed to load, so answers cannot be verified");
    };
    let items: Vec<AnswerToVerify> = answers
        .iter()
        .map(|(_, q, a, _)| AnswerToVerify {
            question: q,
            answer: a,
            logprobs: &[],
        })
        .collect();
    let scores = offline_verify::score_answers(verifier, scorer, &items)?;
    for ((k, _, _, routed), v) in answers.iter().zip(scores) {
        if let Some(line) = lines[*k].as_mut() {
            line["verify_score"] = json!(v);
            line["verify_tier"] = json!(policy.tier(routed, v));
        }
    }
    Ok(())
}

/// Options of `calibrate`.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// Labelled JSONL.
    pub input: PathBuf,
    /// Choose the threshold for this tier-2 share instead of max accuracy.
    pub target_share: Option<f64>,
    /// Score with out-of-fold heads fitted on the file itself (honest
    /// numbers on training data) instead of the configured head.
    pub cv_folds: Option<usize>,
    /// Seed of the folds.
    pub seed: u64,
    /// Only this many rows (a seeded sample), e.g. when self-rating is slow.
    pub limit: Option<usize>,
    /// Tier-2 price / tier-1 price.
    pub price_ratio: f64,
    /// Write the scores (id, embedding, llm, final) here.
    pub scores_out: Option<PathBuf>,
    /// Precomputed MiniLM vectors of the input, used instead of the model.
    pub vectors: Option<PathBuf>,
    /// Precomputed answer-tail vectors, for the verifier's report.
    pub answer_vectors: Option<PathBuf>,
    /// The verifier and the combined policy's thresholds.
    pub verify: VerifyConfig,
}

/// `calibrate`: scores labelled data with the configured pipeline (rules,
/// head or cross-validated head, self-rating if enabled), prints AUC, APGR,
/// CPT and the threshold sweep, and the chosen threshold.
pub async fn calibrate(
    scorer: &Arc<Scorer>,
    rater: Option<&Arc<dyn SelfRater>>,
    rating_concurrency: usize,
    opts: &CalibrateOptions,
) -> anyhow::Result<()> {
    let data = load_labelled(scorer, &opts.input)?;
    let vectors = minilm_vectors(scorer.model(), &data, opts.vectors.as_deref())?;
    let xs = head_inputs(scorer.head_input(), &vectors, &data.prepared);
    let all_ys: Vec<bool> = data.outcomes.iter().map(|o| o.tier2).collect();
    // Cross-validation uses every row, even when only a sample is reported.
    let all_embedding: Vec<f64> = match opts.cv_folds {
        Some(k) => {
            let folds = stratified_folds(&all_ys, k, opts.seed);
            cross_validated_scores(&xs, &all_ys, &folds, scorer.head().fit_options())
        }
        None => xs.iter().map(|x| scorer.head().score(x)).collect(),
    };
    // The first stage, as configured: settled rows take its score.
    let first_stage = scorer.first_stage();
    let all_static: Option<Vec<f64>> = first_stage.map(|fs| {
        let sx: Vec<Vec<f32>> = data
            .prepared
            .iter()
            .map(|p| fs.features(&p.tokens.ids, &p.tokens.text))
            .collect();
        match opts.cv_folds {
            Some(k) => {
                let folds = stratified_folds(&all_ys, k, opts.seed);
                cross_validated_scores(&sx, &all_ys, &folds, fs.head().fit_options())
            }
            None => sx.iter().map(|x| fs.head().score(x)).collect(),
        }
    });
    let all_transformer = all_embedding;
    let all_embedding: Vec<f64> = match (&all_static, first_stage) {
        (Some(st), Some(fs)) => all_transformer
            .iter()
            .zip(st)
            .map(|(t, s)| if fs.settles(*s) { *s } else { *t })
            .collect(),
        _ => all_transformer.clone(),
    };
    let mut idx: Vec<usize> = (0..data.rows.len()).collect();
    if let Some(limit) = opts.limit.filter(|l| *l < data.rows.len()) {
        let mut rng = triage_complexity::head::SplitMix64(opts.seed);
        for i in (1..idx.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        idx.truncate(limit);
        idx.sort_unstable();
    }
    let data = Labelled {
        rows: idx.iter().map(|&i| data.rows[i].clone()).collect(),
        outcomes: idx.iter().map(|&i| data.outcomes[i]).collect(),
        prepared: idx.iter().map(|&i| data.prepared[i].clone()).collect(),
    };
    let embedding: Vec<f64> = idx.iter().map(|&i| all_embedding[i]).collect();
    let transformer: Vec<f64> = idx.iter().map(|&i| all_transformer[i]).collect();
    let settled: Vec<bool> = idx
        .iter()
        .map(|&i| match (&all_static, first_stage) {
            (Some(st), Some(fs)) => fs.settles(st[i]),
            _ => false,
        })
        .collect();
    let ys: Vec<bool> = data.outcomes.iter().map(|o| o.tier2).collect();
    let n = data.rows.len();
    // Like the service: no LLM call for rule-forced or first-stage-settled rows.
    let needs_llm: Vec<bool> = data
        .prepared
        .iter()
        .zip(&settled)
        .map(|(p, s)| !*s && p.rule.is_none())
        .collect();
    let llm: Vec<Option<f64>> = match rater {
        None => vec![None; n],
        Some(rater) => {
            let pending: Vec<Prepared> = data
                .prepared
                .iter()
                .zip(&needs_llm)
                .filter(|(_, need)| **need)
                .map(|(p, _)| p.clone())
                .collect();
            let mut rated = rate_all(rater, &pending, rating_concurrency)
                .await
                .into_iter();
            needs_llm
                .iter()
                .map(|need| if *need { rated.next().flatten() } else { None })
                .collect()
        }
    };
    let blend = scorer.blend();
    let finals: Vec<f64> = (0..n)
        .map(|i| {
            if data.prepared[i].rule.is_some() {
                1.0
            } else {
                blend.combine(embedding[i], llm[i])
            }
        })
        .collect();
    let rule_forced = data.prepared.iter().filter(|p| p.rule.is_some()).count();
    println!(
        "{}: {} rows{}; head: {}; rules forced {} to tier 2; self-rating: {}",
        opts.input.display(),
        n,
        if opts.limit.is_some() {
            " (seeded sample)"
        } else {
            ""
        },
        match opts.cv_folds {
            Some(k) => format!("{k}-fold cross-validated (l2={})", scorer.head().l2),
            None => "configured weights (in-sample if trained on this file)".into(),
        },
        rule_forced,
        match rater {
            None => "off".to_string(),
            Some(_) => format!(
                "{} of {} rated",
                llm.iter().filter(|l| l.is_some()).count(),
                n
            ),
        }
    );
    let line = |label: &str, scores: &[f64]| {
        println!(
            "{}",
            summary_line(label, &calibration::summarise(scores, &data.outcomes))
        )
    };
    line("transformer + head alone", &transformer);
    if let (Some(st), Some(fs)) = (&all_static, first_stage) {
        let st: Vec<f64> = idx.iter().map(|&i| st[i]).collect();
        line("first stage alone", &st);
        let (lo, hi) = fs.band();
        let share = settled.iter().filter(|s| **s).count() as f64 / n.max(1) as f64;
        line(
            &format!("two-stage [{lo}, {hi}) {:.0}% settled", 100.0 * share),
            &embedding,
        );
    }
    let ruled = with_rules(&embedding, &data.prepared);
    println!(
        "{}",
        summary_line(
            "embedding stage + rules",
            &calibration::summarise(&ruled, &data.outcomes)
        )
    );
    if rater.is_some() {
        let llm_only: Vec<f64> = llm.iter().map(|l| l.unwrap_or(0.5)).collect();
        println!(
            "{}",
            summary_line(
                "self-rating alone",
                &calibration::summarise(&llm_only, &data.outcomes)
            )
        );
        let blended: Vec<f64> = (0..n)
            .map(|i| blend.combine(embedding[i], llm[i]))
            .collect();
        println!(
            "{}",
            summary_line(
                "embedding stage + self-rating",
                &calibration::summarise(&blended, &data.outcomes)
            )
        );
    }
    let summary = calibration::summarise(&finals, &data.outcomes);
    println!("{}", summary_line("final score (as configured)", &summary));
    if let Some(curve) = PgrCurve::new(&finals, &data.outcomes) {
        println!(
            "quality: all tier 1 {:.1}%, all tier 2 {:.1}%",
            100.0 * curve.quality_small,
            100.0 * curve.quality_large
        );
    }

    let mut thresholds: Vec<f64> = (0..=20).map(|i| f64::from(i) * 0.05).collect();
    let chosen_acc = calibration::threshold_max_accuracy(&finals, &data.outcomes);
    thresholds.push(chosen_acc);
    let chosen_share = opts
        .target_share
        .map(|s| calibration::threshold_for_share(&finals, s));
    thresholds.extend(chosen_share);
    thresholds.push(blend.threshold);
    thresholds.sort_by(|a, b| a.total_cmp(b));
    thresholds.dedup();
    println!();
    println!(
        "threshold  tier2_share  accuracy  rel_cost(x{})  PGR",
        opts.price_ratio
    );
    for row in calibration::sweep(&finals, &data.outcomes, &thresholds, opts.price_ratio) {
        let mut mark = String::new();
        if row.threshold == blend.threshold {
            mark.push_str("  <- configured");
        }
        if row.threshold == chosen_acc {
            mark.push_str("  <- max accuracy");
        }
        if Some(row.threshold) == chosen_share {
            mark.push_str("  <- target share");
        }
        println!(
            "{:>9.4}  {:>11.3}  {:>8.3}  {:>12.3}  {:>6}{}",
            row.threshold,
            row.tier2_share,
            row.accuracy,
            row.relative_cost,
            row.pgr.map_or("n/a".into(), |p| format!("{p:.3}")),
            mark
        );
    }
    println!();
    match chosen_share {
        Some(t) => println!("threshold for tier-2 share {:.3}: {t:.4}", opts.target_share.unwrap_or_default()),
        None if finals.iter().all(|s| *s < chosen_acc) => println!(
            "threshold with the highest accuracy: {chosen_acc:.4}, above every score: all tier 1 is the most accurate here, so choose by --target-share instead"
        ),
        None => println!("threshold with the highest accuracy: {chosen_acc:.4}"),
    }
    let verify = verify_report(scorer, &data, &finals, opts)?;
    if let Some(path) = &opts.scores_out {
        let mut out = BufWriter::new(std::fs::File::create(path)?);
        for i in 0..n {
            serde_json::to_writer(
                &mut out,
                &json!({
                    "id": data.rows[i].id,
                    "embedding": embedding[i],
                    "transformer": transformer[i],
                    "settled_by_first_stage": settled[i],
                    "llm": llm[i],
                    "rule": data.prepared[i].rule.as_ref().map(|r| r.rule.clone()),
                    "score": finals[i],
                    "verify": verify[i],
                    "label_tier": if ys[i] { 2 } else { 1 },
                }),
            )?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The verifier's report over the rows with `small_response`, if any;
/// returns each row's verify score (`None` without an answer).
fn verify_report(
    scorer: &Scorer,
    data: &Labelled,
    finals: &[f64],
    opts: &CalibrateOptions,
) -> anyhow::Result<Vec<Option<f64>>> {
    let answered = Answered::of(&data.rows, &data.outcomes);
    if answered.rows.is_empty() {
        return Ok(vec![None; data.rows.len()]);
    }
    let router: Vec<f64> = data
        .rows
        .iter()
        .zip(finals)
        .filter(|(r, _)| r.small_response.is_some())
        .map(|(_, s)| *s)
        .collect();
    let verifier = Verifier::from_config(&opts.verify)?;
    let (report, verify, per_answer) = offline_verify::evaluate_policies(
        scorer,
        &verifier,
        &answered,
        &router,
        opts.answer_vectors.as_deref(),
        opts.price_ratio,
    )?;
    print!("{}", report.render());
    println!(
        "verify stage without the embedding (answer form + head): {:.1} µs an answer",
        per_answer * 1e6
    );
    let mut scores = verify.into_iter();
    Ok(data
        .rows
        .iter()
        .map(|r| r.small_response.as_ref().and_then(|_| scores.next()))
        .collect())
}

async fn rate_all(
    rater: &Arc<dyn SelfRater>,
    prepared: &[Prepared],
    concurrency: usize,
) -> Vec<Option<f64>> {
    use futures::StreamExt;
    let started = Instant::now();
    let total = prepared.len();
    let mut done = 0usize;
    let mut results: Vec<(usize, Option<f64>)> = futures::stream::iter(prepared.iter().enumerate())
        .map(|(i, p)| {
            let rater = Arc::clone(rater);
            let text = p.tokens.text.clone();
            async move { (i, rater.rate(&text).await.ok()) }
        })
        .buffer_unordered(concurrency.max(1))
        .inspect(|_| {
            done += 1;
            eprint!(
                "\rrated {done}/{total} ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        })
        .collect()
        .await;
    eprintln!();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, v)| v).collect()
}
