//! JSONL files of prompts, as in `data/routing-dev.jsonl`: one
//! object a line with `id`, `prompt` or `messages`, and for labelled data
//! `label_tier`, `small_ok`, `large_ok`.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use triage_protocol::ChatMessage;

use crate::calibration::Outcome;
use crate::embedding::EmbedError;
use crate::prompt_text::text_to_score;
use crate::truncation::Truncator;

/// The folder of the labelled prompt files: `TRIAGE_DATA_DIR` when set,
/// else the repository's `data/` (shipped with the source, so tests,
/// benchmarks and the demo need nothing beside the clone).
pub fn data_dir() -> PathBuf {
    std::env::var_os("TRIAGE_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"))
}

/// One line of a prompts file. Other fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PromptRow {
    /// The prompt's id (a number is accepted and written as text).
    #[serde(default, deserialize_with = "id_as_string")]
    pub id: String,
    /// A plain prompt.
    #[serde(default)]
    pub prompt: Option<String>,
    /// OpenAI-style messages, used when present.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// 1 or 2 for labelled data.
    #[serde(default)]
    pub label_tier: Option<u8>,
    /// Whether the small model answered well.
    #[serde(default)]
    pub small_ok: Option<bool>,
    /// Whether the large model answered well.
    #[serde(default)]
    pub large_ok: Option<bool>,
    /// Where the prompt comes from, for per-source reports.
    #[serde(default)]
    pub source: Option<String>,
    /// The small model's (tier 1's) recorded answer, for the verifier.
    #[serde(default)]
    pub small_response: Option<String>,
}

fn id_as_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

impl PromptRow {
    /// The conversation: `messages`, or `prompt` as one user message.
    pub fn chat_messages(&self) -> Vec<ChatMessage> {
        match (&self.messages, &self.prompt) {
            (Some(m), _) if !m.is_empty() => m.clone(),
            (_, Some(p)) => vec![ChatMessage::user(p.clone())],
            _ => Vec::new(),
        }
    }

    /// The text the router scores.
    pub fn text(&self) -> String {
        text_to_score(&self.chat_messages())
    }

    /// The label and outcomes, when the row is labelled.
    pub fn outcome(&self) -> Option<Outcome> {
        Some(Outcome {
            tier2: self.label_tier? == 2,
            small_ok: self.small_ok,
            large_ok: self.large_ok,
        })
    }
}

/// A line that is not a prompt row.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid JSON of the expected shape.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A text could not be tokenised.
    #[error(transparent)]
    Tokenize(#[from] EmbedError),
    /// Too few prompts are long enough for a benchmark case.
    #[error("only {found} of the {wanted} prompts asked for have {tokens} tokens")]
    TooFewPrompts {
        /// Prompts found.
        found: usize,
        /// Prompts asked for.
        wanted: usize,
        /// The length asked for.
        tokens: usize,
    },
}

/// Reads every non-blank line of a JSONL file.
pub fn read_rows(path: &Path) -> Result<Vec<PromptRow>, DatasetError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| DatasetError::Io {
        path: p.clone(),
        source,
    })?;
    parse_rows(std::io::BufReader::new(file), &p)
}

/// Parses JSONL from a reader; `name` labels errors.
pub fn parse_rows(reader: impl BufRead, name: &str) -> Result<Vec<PromptRow>, DatasetError> {
    let mut rows = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| DatasetError::Io {
            path: name.to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row: PromptRow = serde_json::from_str(&line).map_err(|e| DatasetError::Line {
            path: name.to_string(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// Benchmark prompts of one length: the first `n` real prompts of `dir`'s
/// `prompt-lengths.jsonl`, then `routing-dev.jsonl`, that fill the
/// truncator's budget, cut to it, so each is exactly `max_tokens` model
/// tokens long.
pub fn prompts_of_length(
    dir: &Path,
    truncator: &Truncator,
    n: usize,
) -> Result<Vec<String>, DatasetError> {
    let mut rows = read_rows(&dir.join("prompt-lengths.jsonl"))?;
    rows.extend(read_rows(&dir.join("routing-dev.jsonl"))?);
    let mut out = Vec::with_capacity(n);
    for row in rows {
        let t = truncator.truncate(&row.text())?;
        if t.truncated || t.ids.len() == truncator.max_tokens() {
            out.push(t.text);
            if out.len() == n {
                return Ok(out);
            }
        }
    }
    Err(DatasetError::TooFewPrompts {
        found: out.len(),
        wanted: n,
        tokens: truncator.max_tokens(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prompts_messages_and_labels() {
        let data = r#"{"id": "a1", "prompt": "hi", "label_tier": 2, "small_ok": false, "large_ok": true, "extra": 1}

{"id": 7, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}]}
"#;
        let rows = parse_rows(data.as_bytes(), "mem").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].text(), "hi");
        assert_eq!(
            rows[0].outcome(),
            Some(Outcome {
                tier2: true,
                small_ok: Some(false),
                large_ok: Some(true)
            })
        );
        assert_eq!(rows[1].id, "7");
        assert_eq!(rows[1].text(), "why?\n\nbe brief");
        assert_eq!(rows[1].outcome(), None);
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let err = parse_rows("{\"id\": \"a\"}\nnot json\n".as_bytes(), "f.jsonl").unwrap_err();
        assert!(err.to_string().starts_with("f.jsonl:2:"), "{err}");
    }
}
