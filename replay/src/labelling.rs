//! `triage-replay outcomes`: real outcome labels for a tier pair. Each
//! prompt is answered by tier 1 and tier 2 (OpenAI-compatible servers,
//! temperature 0, logprobs requested), each answer is graded — against the
//! row's gold `answer` by [`crate::grade`], or by a judge model where there
//! is none — and a row in the format of `data/routing-dev.jsonl` is
//! appended to the output: `small_ok`, `large_ok`, `label_tier`, both
//! responses and predictions, plus tier 1's token-confidence features
//! (`small_logprobs`). Rows already in the output are skipped, so an
//! interrupted run resumes where it stopped.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use triage_backend::types::{ChatMessage, ChatRequest};
use triage_backend::{BackendClient, BackendConfig};
use triage_complexity::answer_confidence::{logprob_features, LOGPROB_NAMES};
use triage_complexity::calibration::roc_auc;
use triage_complexity::dataset::PromptRow;

use crate::grade::{self, Rule};

/// What `outcomes` is asked to do.
#[derive(Debug, Clone)]
pub struct LabelOptions {
    /// Input JSONL (the routing-dev format; `answer`, `answer_regex` used).
    pub input: PathBuf,
    /// Output JSONL, appended to.
    pub out: PathBuf,
    /// Tier 1's server and model (`None`: the first it serves).
    pub tier1: (String, Option<String>),
    /// Tier 2's.
    pub tier2: (String, Option<String>),
    /// The judge's, for rows without a gold answer.
    pub judge: Option<(String, Option<String>)>,
    /// Completion token limit per answer.
    pub max_tokens: u32,
    /// A system message put before each prompt.
    pub system: Option<String>,
    /// Only the first `n` rows with a gold answer (or all, with a judge).
    pub limit: Option<usize>,
    /// Prompts answered at once.
    pub concurrency: usize,
}

/// A line of input.
#[derive(Debug, Clone, Deserialize)]
struct InputRow {
    #[serde(flatten)]
    prompt: PromptRow,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    answer_regex: Option<String>,
}

/// One model behind an OpenAI-compatible URL.
struct Model {
    client: BackendClient,
    name: String,
}

impl Model {
    async fn connect(url: &str, name: Option<&str>) -> anyhow::Result<Self> {
        let client = BackendClient::new(BackendConfig::new(url))
            .with_context(|| format!("backend {url}"))?;
        let name = match name {
            Some(n) => n.to_string(),
            None => client
                .models()
                .await
                .with_context(|| format!("GET {url}/v1/models"))?
                .data
                .first()
                .map(|m| m.id.clone())
                .with_context(|| format!("{url} serves no model"))?,
        };
        Ok(Self { client, name })
    }

    /// The answer at temperature 0 and its tokens' logprobs.
    async fn answer(
        &self,
        messages: Vec<ChatMessage>,
        max_tokens: u32,
    ) -> anyhow::Result<(String, Vec<f32>)> {
        let mut request = ChatRequest::new(messages);
        request.model = Some(self.name.clone());
        request.max_tokens = Some(max_tokens);
        request.temperature = Some(0.0);
        request.logprobs = Some(true);
        let c = self
            .client
            .chat(&request)
            .await
            .with_context(|| format!("{} at {}", self.name, self.client.base_url()))?;
        let logprobs = c
            .choices
            .first()
            .and_then(|ch| ch.logprobs.as_ref())
            .and_then(|l| l.content.as_ref())
            .map(|tokens| tokens.iter().map(|t| t.logprob as f32).collect())
            .unwrap_or_default();
        Ok((c.text().to_string(), logprobs))
    }
}

/// The input rows with their line numbers; a bad line is an error naming it.
fn read_input(path: &Path) -> anyhow::Result<Vec<(usize, InputRow)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: InputRow = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a prompt row", path.display(), i + 1))?;
        if row.prompt.id.is_empty() || row.prompt.chat_messages().is_empty() {
            bail!(
                "{}:{}: a row needs an id and a prompt or messages",
                path.display(),
                i + 1
            );
        }
        rows.push((i + 1, row));
    }
    Ok(rows)
}

/// Ids already written to `out` (a resumed run skips them).
fn done_ids(out: &Path) -> anyhow::Result<HashSet<String>> {
    if !out.exists() {
        return Ok(HashSet::new());
    }
    let text =
        std::fs::read_to_string(out).with_context(|| format!("cannot read {}", out.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).with_context(|| {
                format!(
                    "{}:{}: not JSON (truncated by a crash? remove the line)",
                    out.display(),
                    i + 1
                )
            })?;
            Ok(v["id"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// A graded answer: ok, what was read from it, and the judge's score.
struct Verdict {
    ok: bool,
    pred: Option<String>,
    score: Option<f64>,
}

/// How rows are graded: the gold answer's rule, or the judge.
enum Grader<'a> {
    Gold {
        rule: Rule,
        gold: String,
        regex: Option<Regex>,
    },
    Judge(&'a Model),
}

impl Grader<'_> {
    async fn grade(&self, question: &str, answer: &str) -> anyhow::Result<Verdict> {
        match self {
            Grader::Gold { rule, gold, regex } => {
                let g = grade::grade(*rule, gold, regex.as_ref(), answer);
                Ok(Verdict {
                    ok: g.ok,
                    pred: g.pred,
                    score: None,
                })
            }
            Grader::Judge(judge) => {
                let prompt = grade::judge_prompt(question, answer);
                let (verdict, _) = judge.answer(vec![ChatMessage::user(prompt)], 512).await?;
                let score = grade::judge_score(&verdict);
                Ok(Verdict {
                    ok: score.is_some_and(|s| s >= grade::GOOD_SCORE),
                    pred: None,
                    score,
                })
            }
        }
    }

    fn basis(&self) -> String {
        match self {
            Grader::Gold { rule, .. } => rule.describe().to_string(),
            Grader::Judge(j) => format!("judge {} single-answer grade >= 7 of 10", j.name),
        }
    }
}

/// The three models.
struct Models {
    tier1: Model,
    tier2: Model,
    judge: Option<Model>,
}

/// Answers and grades one row; the output line.
async fn label(
    models: &Models,
    opts: &LabelOptions,
    row: &InputRow,
    line: usize,
) -> anyhow::Result<Value> {
    let grader = match (&row.answer, &models.judge) {
        (Some(gold), _) if !gold.trim().is_empty() => {
            let regex = row
                .answer_regex
                .as_deref()
                .map(Regex::new)
                .transpose()
                .with_context(|| format!("line {line}: `answer_regex`"))?;
            Grader::Gold {
                rule: Rule::for_gold(gold, regex.is_some()),
                gold: gold.clone(),
                regex,
            }
        }
        (_, Some(judge)) => Grader::Judge(judge),
        _ => bail!(
            "line {line} (id {}): no gold `answer` and no --judge to grade it",
            row.prompt.id
        ),
    };
    let mut messages: Vec<ChatMessage> = opts.system.iter().map(ChatMessage::system).collect();
    messages.extend(
        row.prompt
            .chat_messages()
            .into_iter()
            .map(|m| ChatMessage::new(m.role, m.content)),
    );
    let (small, small_lp) = models
        .tier1
        .answer(messages.clone(), opts.max_tokens)
        .await?;
    let (large, _) = models.tier2.answer(messages, opts.max_tokens).await?;
    let question = row.prompt.text();
    let s = grader.grade(&question, &small).await?;
    let l = grader.grade(&question, &large).await?;
    let features = logprob_features(&small_lp);
    let confidence: Map<String, Value> = LOGPROB_NAMES
        .iter()
        .zip(features)
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    Ok(json!({
        "id": row.prompt.id,
        "prompt": question,
        "source": row.prompt.source,
        "answer": row.answer,
        "label_tier": if !s.ok && l.ok { 2 } else { 1 },
        "label_basis": grader.basis(),
        "small_ok": s.ok, "large_ok": l.ok,
        "small_model": models.tier1.name, "large_model": models.tier2.name,
        "small_score": s.score, "large_score": l.score,
        "small_response": small, "large_response": large,
        "small_pred": s.pred, "large_pred": l.pred,
        "small_logprobs": confidence,
    }))
}

/// Runs `outcomes` and prints its summary.
pub async fn run(opts: &LabelOptions) -> anyhow::Result<()> {
    let mut rows = read_input(&opts.input)?;
    let judge = match &opts.judge {
        Some((url, name)) => Some(Model::connect(url, name.as_deref()).await?),
        None => None,
    };
    if judge.is_none() {
        rows.retain(|(_, r)| r.answer.as_deref().is_some_and(|a| !a.trim().is_empty()));
    }
    if let Some(n) = opts.limit {
        rows.truncate(n);
    }
    let models = Models {
        tier1: Model::connect(&opts.tier1.0, opts.tier1.1.as_deref()).await?,
        tier2: Model::connect(&opts.tier2.0, opts.tier2.1.as_deref()).await?,
        judge,
    };
    let done = done_ids(&opts.out)?;
    let todo: Vec<&(usize, InputRow)> = rows
        .iter()
        .filter(|(_, r)| !done.contains(&r.prompt.id))
        .collect();
    eprintln!(
        "{} rows, {} already in {}; tier 1 {}, tier 2 {}",
        rows.len(),
        rows.len() - todo.len(),
        opts.out.display(),
        models.tier1.name,
        models.tier2.name
    );
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.out)
        .with_context(|| format!("cannot write {}", opts.out.display()))?;
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {elapsed} (eta {eta})")
            .expect("template"),
    );
    let mut labelled = futures::stream::iter(
        todo.iter()
            .map(|(line, row)| label(&models, opts, row, *line)),
    )
    .buffer_unordered(opts.concurrency.max(1));
    while let Some(result) = labelled.next().await {
        let line = result?;
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("writing the output")?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    print!("{}", summarise(&opts.out, &rows)?);
    Ok(())
}

/// The summary over the output's rows of this input: accuracies, tier-2
/// share, and how well tier 1's token confidence predicts its mistakes.
fn summarise(out: &Path, rows: &[(usize, InputRow)]) -> anyhow::Result<String> {
    let ids: HashSet<&str> = rows.iter().map(|(_, r)| r.prompt.id.as_str()).collect();
    let text = std::fs::read_to_string(out)?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| ids.contains(v["id"].as_str().unwrap_or_default()))
        .collect();
    Ok(render_summary(&lines))
}

/// [`summarise`]'s text from output lines.
pub fn render_summary(lines: &[Value]) -> String {
    let n = lines.len().max(1) as f64;
    let count = |key: &str| lines.iter().filter(|l| l[key] == true).count();
    let tier2 = lines.iter().filter(|l| l["label_tier"] == 2).count();
    let poor: Vec<bool> = lines.iter().map(|l| l["small_ok"] == false).collect();
    let mut s = format!(
        "{} rows: tier 1 answered well {:.1}%, tier 2 {:.1}%, label tier 2 {:.1}%\n",
        lines.len(),
        100.0 * count("small_ok") as f64 / n,
        100.0 * count("large_ok") as f64 / n,
        100.0 * tier2 as f64 / n
    );
    let with_lp = lines
        .iter()
        .filter(|l| l["small_logprobs"]["has_logprobs"] == 1.0)
        .count();
    s += &format!("tier 1 logprobs on {with_lp} rows; ROC AUC of low confidence against a wrong tier-1 answer:\n");
    for name in LOGPROB_NAMES.iter().skip(1) {
        // Lower logprob = less confident: negate so higher = more likely wrong.
        let scores: Vec<f64> = lines
            .iter()
            .map(|l| -l["small_logprobs"][*name].as_f64().unwrap_or(0.0))
            .collect();
        let auc = roc_auc(&scores, &poor).map_or("n/a".to_string(), |a| format!("{a:.3}"));
        s += &format!("  {name:<14} {auc}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_accuracy_and_confidence() {
        let row = |ok: bool, large: bool, mean: f64| {
            json!({"id": "x", "small_ok": ok, "large_ok": large, "label_tier": if !ok && large {2} else {1},
                   "small_logprobs": {"has_logprobs": 1.0, "mean_logprob": mean, "min_logprob": mean,
                   "q05_logprob": mean, "q10_logprob": mean, "q25_logprob": mean}})
        };
        let lines = vec![
            row(true, true, -0.1),
            row(false, true, -2.0),
            row(false, false, -1.5),
            row(true, true, -0.2),
        ];
        let s = render_summary(&lines);
        assert!(
            s.contains("tier 1 answered well 50.0%, tier 2 75.0%, label tier 2 25.0%"),
            "{s}"
        );
        assert!(s.contains("mean_logprob   1.000"), "{s}");
    }
}
