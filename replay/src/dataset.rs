//! Replay input: a JSONL of requests in the format of
//! `data/routing-dev.jsonl` (read by the router's own
//! [`PromptRow`]), plus what a replay also uses: `max_tokens`, `tenant`
//! and, in traces written by `record`, `timestamp_ms`.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use triage_complexity::dataset::PromptRow;
use triage_protocol::Request;

/// One line of input. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Row {
    /// Id, text, label and outcomes.
    #[serde(flatten)]
    pub prompt: PromptRow,
    /// Output bound for this request.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Tenant to book it to.
    #[serde(default)]
    pub tenant: Option<String>,
    /// An explicit tier (1 or 2), honoured by `score` as the router does.
    #[serde(default)]
    pub tier: Option<u8>,
    /// Arrival time in a recorded trace, Unix epoch milliseconds.
    #[serde(default)]
    pub timestamp_ms: Option<u64>,
}

/// A line that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a JSON object of the expected shape.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No usable lines.
    #[error("{0}: no requests in the file")]
    Empty(String),
}

impl Row {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.prompt.id
    }

    /// The request to publish, `max_tokens` defaulting to
    /// `default_max_tokens`. Ids get a run suffix so repeated runs (and the
    /// baseline) are not taken for duplicates by JetStream or the ledger.
    pub fn to_request(&self, default_max_tokens: u32, run_tag: &str) -> Request {
        Request {
            id: format!("{}-{run_tag}", self.prompt.id),
            messages: Some(self.prompt.chat_messages()),
            max_tokens: Some(self.max_tokens.unwrap_or(default_max_tokens)),
            tenant: self.tenant.clone(),
            ..Request::default()
        }
    }
}

/// Reads every row; blank lines are skipped, any other bad line is an
/// error naming the line.
pub fn load(path: &Path) -> Result<Vec<Row>, DatasetError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| DatasetError::Io {
        path: name.clone(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| DatasetError::Io {
            path: name.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| DatasetError::Line {
            path: name.clone(),
            line: i + 1,
            reason,
        };
        let mut row: Row = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        if row.prompt.text().trim().is_empty() {
            return Err(bad("neither `prompt` nor `messages` has text".into()));
        }
        if let Some(t) = row.prompt.label_tier {
            if t != 1 && t != 2 {
                return Err(bad(format!("`label_tier` must be 1 or 2, got {t}")));
            }
        }
        if row.prompt.id.is_empty() {
            row.prompt.id = format!("line-{}", i + 1);
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(DatasetError::Empty(name));
    }
    Ok(rows)
}

/// A deterministic sample of `n` rows (all when `n` ≥ len), in file order.
pub fn sample(rows: Vec<Row>, n: usize, seed: u64) -> Vec<Row> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if n >= rows.len() {
        return rows;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.shuffle(&mut rng);
    idx.truncate(n);
    idx.sort_unstable();
    let mut rows: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
    idx.into_iter().filter_map(|i| rows[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn reads_the_routing_dev_format_and_ignores_unknown_fields() {
        let f = file(concat!(
            r#"{"id":"a1","prompt":"What is 2+2?","source":"gsm8k/test","label_tier":2,"small_ok":false,"large_ok":true,"tenant":"t"}"#,
            "\n\n",
            r#"{"messages":[{"role":"user","content":"hi"}],"timestamp_ms":5}"#,
            "\n"
        ));
        let rows = load(f.path()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].prompt.label_tier, Some(2));
        assert_eq!(rows[0].prompt.large_ok, Some(true));
        assert_eq!(rows[1].id(), "line-3");
        assert_eq!(rows[1].timestamp_ms, Some(5));
        let req = rows[0].to_request(64, "r1");
        assert_eq!(req.max_tokens, Some(64));
        assert_eq!(req.id, "a1-r1");
        assert_eq!(req.tenant.as_deref(), Some("t"));
        assert_eq!(req.chat_messages()[0].content, "What is 2+2?");
    }

    #[test]
    fn bad_lines_are_named() {
        let f = file("{\"prompt\":\"ok\"}\n{\"prompt\":\"\"}\n");
        let err = load(f.path()).unwrap_err().to_string();
        assert!(
            err.ends_with(":2: neither `prompt` nor `messages` has text"),
            "{err}"
        );
        let f = file("{\"prompt\":\"x\",\"label_tier\":3}\n");
        assert!(load(f.path())
            .unwrap_err()
            .to_string()
            .contains("label_tier"));
        let f = file("not json\n");
        assert!(load(f.path()).unwrap_err().to_string().contains(":1:"));
        let f = file("\n");
        assert!(matches!(load(f.path()), Err(DatasetError::Empty(_))));
    }

    #[test]
    fn sampling_is_deterministic_and_keeps_order() {
        let text: String = (0..50)
            .map(|i| format!("{{\"id\":\"{i}\",\"prompt\":\"p\"}}\n"))
            .collect();
        let f = file(&text);
        let rows = load(f.path()).unwrap();
        let a: Vec<String> = sample(rows.clone(), 10, 7)
            .iter()
            .map(|r| r.id().to_string())
            .collect();
        let b: Vec<String> = sample(rows.clone(), 10, 7)
            .iter()
            .map(|r| r.id().to_string())
            .collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        let nums: Vec<u32> = a.iter().map(|s| s.parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sample(rows, 100, 7).len(), 50);
    }
}
