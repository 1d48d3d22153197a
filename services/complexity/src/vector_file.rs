//! A file of the vectors the router computes for a prompts file, one JSON
//! line per prompt: `id`, the MiniLM embedding `v`, the static first
//! stage's vector `s`, the prompt-form features `f`, whether a built-in
//! rule fired (`rule`) and the model tokens kept (`ntok`).
//!
//! Embedding 11k prompts takes ten minutes of both cores; written once by
//! `triage-router embed`, the file lets `train` and `calibrate` (and the
//! Python analysis) reuse the exact vectors instead of running the model
//! again. f32 values are written in their shortest round-trip form.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dataset::DatasetError;

/// One prompt's vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorRow {
    /// The prompt's id.
    pub id: String,
    /// MiniLM sentence embedding of the truncated text.
    pub v: Vec<f32>,
    /// The first stage's static vector, when it was enabled.
    #[serde(default)]
    pub s: Option<Vec<f32>>,
    /// The prompt-form features of the truncated text.
    #[serde(default)]
    pub f: Option<Vec<f32>>,
    /// Whether a built-in rule fired.
    pub rule: bool,
    /// Model tokens kept, `[CLS]` and `[SEP]` included.
    pub ntok: usize,
}

/// Writes `rows`, one line each.
pub fn write_vectors(out: &mut impl Write, rows: &[VectorRow]) -> std::io::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *out, row)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads a file written by [`write_vectors`].
pub fn read_vectors(path: &Path) -> Result<Vec<VectorRow>, DatasetError> {
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
        rows.push(serde_json::from_str(&line).map_err(|e| DatasetError::Line {
            path: name.clone(),
            line: i + 1,
            reason: e.to_string(),
        })?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_exactly() {
        let rows = vec![
            VectorRow {
                id: "a".into(),
                v: vec![0.1, -1.0e-7, f32::MIN_POSITIVE, 0.333_333_34],
                s: Some(vec![1.0, 2.5]),
                f: Some(vec![0.0, 3f32.ln()]),
                rule: false,
                ntok: 9,
            },
            VectorRow {
                id: "b".into(),
                v: vec![0.7],
                s: None,
                f: None,
                rule: true,
                ntok: 3,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        write_vectors(&mut file, &rows).unwrap();
        drop(file);
        let back = read_vectors(&path).unwrap();
        assert_eq!(back, rows);
        for (a, b) in back[0].v.iter().zip(&rows[0].v) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"v\":[1],\"rule\":false,\"ntok\":3}\n{oops\n",
        )
        .unwrap();
        let err = read_vectors(&path).unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
    }
}
