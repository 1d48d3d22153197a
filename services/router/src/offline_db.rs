//! `triage-router train --from-db`: fits a head on a deployment's own
//! judged traffic (the ledger's `outcomes` with stored text, see
//! `triage_ledger::training`) plus any labelled files, holding out the most
//! recently judged slice, and prints the candidate against the live head on
//! that slice: AUC, APGR, CPT and the PGR at fixed tier-2 shares. Nothing is
//! promoted: the operator reads the comparison and runs `promote`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use triage_complexity::calibration::{self, Outcome, Summary};
use triage_complexity::dataset::PromptRow;
use triage_complexity::head::LogisticHead;
use triage_complexity::scorer::{head_version, Scorer, MINILM_FEATURES};
use triage_ledger::training::{self, TrainingRow};

use crate::offline::{self, TrainOptions};
use crate::offline_verify::{self, TrainVerifierOptions};

/// Tier-2 shares at which the comparison reports the PGR.
pub const SHARES: [f64; 4] = [0.2, 0.3, 0.5, 0.7];

/// Options of `train --from-db`.
#[derive(Debug, Clone)]
pub struct FromDbOptions {
    /// The ledger's database.
    pub database_url: String,
    /// Only outcomes judged at or after this (all without).
    pub since: Option<DateTime<Utc>>,
    /// Share of the database rows, the most recent, held out for the
    /// comparison (never trained on).
    pub holdout: f64,
    /// Labelled files trained on besides the database rows (never held out).
    pub inputs: Vec<PathBuf>,
    /// How to fit; its `input` is replaced by the combined training file.
    pub train: TrainOptions,
    /// Also fit the verifier on the same rows (every judged request has
    /// tier 1's answer: the client's or the shadow's); `input` replaced.
    pub verifier: Option<TrainVerifierOptions>,
    /// The live head's JSON (the promoted one, else the configured one).
    pub live: Option<Vec<u8>>,
}

/// The rows split by time: older ones to train on, the newest held out.
pub fn split_by_time(rows: Vec<TrainingRow>, holdout: f64) -> (Vec<TrainingRow>, Vec<TrainingRow>) {
    let n = rows.len();
    let held = ((holdout.clamp(0.0, 1.0) * n as f64).ceil() as usize).min(n);
    let mut rows = rows;
    rows.sort_by_key(|r| r.judged_at);
    let recent = rows.split_off(n - held);
    (rows, recent)
}

fn prompt_row(r: &TrainingRow) -> anyhow::Result<PromptRow> {
    Ok(serde_json::from_value(r.to_json())?)
}

/// Runs it: reads, splits, trains, compares.
pub async fn train_from_db(scorer: Scorer, opts: FromDbOptions) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&opts.database_url)
        .await
        .context("cannot connect to the ledger's database (--database-url)")?;
    let rows = training::rows_since(&pool, opts.since).await?;
    pool.close().await;
    let (older, recent) = split_by_time(rows, opts.holdout);
    let since = opts
        .since
        .map_or_else(|| "the start".to_string(), |t| t.to_rfc3339());
    println!(
        "database: {} judged requests with text since {since}; training on {}, holding out the {} most recent",
        older.len() + recent.len(),
        older.len(),
        recent.len()
    );
    if recent.is_empty() {
        bail!("no judged requests to hold out: turn on the shadow service's learning.store_text, collect, or widen --since");
    }
    let dir = opts
        .train
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty());
    let file = combined_file(&older, &opts.inputs, dir)?;
    let mut train = opts.train.clone();
    train.input = file.path().to_path_buf();
    let verifier = opts.verifier.clone().map(|mut v| {
        v.input = file.path().to_path_buf();
        v
    });
    tokio::task::spawn_blocking(move || {
        offline::train(&scorer, &train)?;
        if let Some(v) = &verifier {
            offline_verify::train_verifier(&scorer, v)?;
        }
        drop(file);
        let candidate = std::fs::read(&train.output)
            .with_context(|| format!("reading {}", train.output.display()))?;
        compare(&scorer, &recent, opts.live.as_deref(), &candidate)
    })
    .await?
}

/// The training file: the labelled files' lines, then the older database
/// rows, in a temporary file (prompts stay off disk once trained).
fn combined_file(
    older: &[TrainingRow],
    inputs: &[PathBuf],
    dir: Option<&std::path::Path>,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut file = match dir {
        Some(d) => tempfile::NamedTempFile::new_in(d),
        None => tempfile::NamedTempFile::new(),
    }
    .context("cannot create the training file")?;
    for path in inputs {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            writeln!(file, "{line}")?;
        }
    }
    for r in older {
        writeln!(file, "{}", r.to_json())?;
    }
    file.flush()?;
    Ok(file)
}

/// Scores the held-out rows with the live head and the candidate, prints both.
fn compare(
    scorer: &Scorer,
    recent: &[TrainingRow],
    live: Option<&[u8]>,
    candidate: &[u8],
) -> anyhow::Result<()> {
    let rows: Vec<PromptRow> = recent.iter().map(prompt_row).collect::<Result<_, _>>()?;
    let outcomes: Vec<Outcome> = rows.iter().filter_map(PromptRow::outcome).collect();
    let prepared = rows
        .iter()
        .map(|r| scorer.prepare(&r.text()))
        .collect::<Result<Vec<_>, _>>()?;
    let vectors = offline::embed_all(scorer.model(), &prepared)?;
    let score_with = |json: &[u8]| -> anyhow::Result<(String, Vec<f64>)> {
        let text = std::str::from_utf8(json).context("head is not UTF-8")?;
        let (head, _) = LogisticHead::from_json_input(text, MINILM_FEATURES)?;
        let version = head_version(&head);
        scorer.swap_head(head)?;
        let scores = vectors
            .iter()
            .zip(&prepared)
            .map(|(v, p)| scorer.head_score(v, p))
            .collect::<Vec<_>>();
        Ok((version, offline::with_rules(&scores, &prepared)))
    };
    let live = match live {
        Some(json) => score_with(json)?,
        None => score_with(triage_complexity::scorer::SHIPPED_HEAD.as_bytes())?,
    };
    let cand = score_with(candidate)?;
    println!(
        "held out: {} requests, {} tier 2",
        rows.len(),
        outcomes.iter().filter(|o| o.tier2).count()
    );
    println!("{}", comparison_header());
    for (name, (version, scores)) in [("live", &live), ("candidate", &cand)] {
        println!("{}", comparison_line(name, version, scores, &outcomes));
    }
    let (l, c) = (
        calibration::summarise(&live.1, &outcomes),
        calibration::summarise(&cand.1, &outcomes),
    );
    println!("{}", verdict(&l, &c));
    Ok(())
}

fn comparison_header() -> String {
    let shares: Vec<String> = SHARES
        .iter()
        .map(|s| format!("PGR@{:.0}%", s * 100.0))
        .collect();
    format!(
        "{:<10} {:<16} {:>6} {:>6} {:>6} {}",
        "head",
        "version",
        "AUC",
        "APGR",
        "CPT50",
        shares.join(" ")
    )
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3}"))
}

/// One head's line: its summary and the PGR at each of [`SHARES`].
pub fn comparison_line(name: &str, version: &str, scores: &[f64], outcomes: &[Outcome]) -> String {
    let s = calibration::summarise(scores, outcomes);
    let pgrs: Vec<String> = SHARES
        .iter()
        .map(|share| {
            let t = calibration::threshold_for_share(scores, *share);
            let row = calibration::sweep_row(scores, outcomes, t, calibration::DEFAULT_PRICE_RATIO);
            format!("{:>7}", fmt(row.pgr))
        })
        .collect();
    format!(
        "{name:<10} {version:<16} {:>6} {:>6} {:>6} {}",
        fmt(s.auc),
        fmt(s.apgr),
        fmt(s.cpt50),
        pgrs.join(" ")
    )
}

/// What the comparison says to do.
pub fn verdict(live: &Summary, candidate: &Summary) -> String {
    match (live.apgr, candidate.apgr) {
        (Some(l), Some(c)) if c > l => format!(
            "candidate is ahead on the held-out slice (APGR {c:.3} vs {l:.3}): promote it with `triage-router promote --head FILE`"
        ),
        (Some(l), Some(c)) => format!(
            "candidate is not ahead on the held-out slice (APGR {c:.3} vs {l:.3}): keep the live head"
        ),
        _ => "the held-out slice has no quality gap to recover (both tiers equally good): collect more before deciding".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::ChatMessage;

    fn row(id: &str, secs: i64) -> TrainingRow {
        TrainingRow {
            tenant: None,
            request_id: id.into(),
            messages: vec![ChatMessage::user(id)],
            small_ok: false,
            large_ok: true,
            small_response: None,
            judged_at: DateTime::<Utc>::from_timestamp(secs, 0).unwrap(),
        }
    }

    #[test]
    fn the_most_recent_rows_are_held_out() {
        let rows = vec![
            row("c", 30),
            row("a", 10),
            row("d", 40),
            row("b", 20),
            row("e", 50),
        ];
        let (older, recent) = split_by_time(rows, 0.4);
        let ids = |v: &[TrainingRow]| v.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&older), ["a", "b", "c"]);
        assert_eq!(ids(&recent), ["d", "e"]);
        let (older, recent) = split_by_time(vec![row("a", 1)], 0.1);
        assert!(
            older.is_empty() && recent.len() == 1,
            "at least one is held out"
        );
    }

    #[test]
    fn a_database_row_reads_back_as_a_labelled_prompt() {
        let p = prompt_row(&row("q1", 5)).unwrap();
        assert_eq!(p.text(), "q1");
        let o = p.outcome().unwrap();
        assert!(o.tier2 && o.small_ok == Some(false) && o.large_ok == Some(true));
    }

    #[test]
    fn the_verdict_follows_the_held_out_apgr() {
        let s = |apgr| Summary {
            n: 10,
            auc: None,
            apgr,
            cpt50: None,
            cpt80: None,
        };
        assert!(verdict(&s(Some(0.5)), &s(Some(0.6))).starts_with("candidate is ahead"));
        assert!(verdict(&s(Some(0.6)), &s(Some(0.5))).contains("keep the live head"));
        assert!(verdict(&s(None), &s(None)).contains("no quality gap"));
    }
}
