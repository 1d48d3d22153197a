//! The cheap first stage: static token embeddings distilled from MiniLM.
//!
//! Offline, every vocabulary token is run through MiniLM once on its own
//! (`[CLS] token [SEP]`, mean-pooled and normalised, as a one-word sentence)
//! and the vectors are stored in a table. At run time a text's vector is
//! the normalised mean of its tokens' rows — a lookup and an average, no
//! transformer — fed to its own trained head. Only texts whose first-stage
//! probability falls inside the uncertain band go on to the full model.
//!
//! The table (30,522 × 384 f32, 47 MB) is not committed: it is distilled
//! into the model directory under `$TRIAGE_CACHE` the first time a scorer
//! with the first stage loads (about 35 s on 2 cores) or by `triage-router
//! train --first-stage-output`, and is the same bits on every run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::embedding::{normalise, EmbedError, MiniLm, Precision};
use crate::head::{HeadError, LogisticHead};
use crate::head_input::HeadInput;
use crate::model_files::ModelFiles;

/// Feature tag of heads trained on static embeddings.
pub const STATIC_FEATURES: &str = "all-MiniLM-L6-v2/static-tokens/mean/l2";

/// The table's file name inside the model directory.
pub const TABLE_FILE: &str = "static-token-embeddings.bin";

const MAGIC: &[u8; 8] = b"TRSTAT01";

/// Tokens per distillation forward pass.
const DISTILL_BATCH: usize = 1024;

/// First-stage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirstStageConfig {
    /// Settle clear-cut texts without the transformer.
    pub enabled: bool,
    /// The token table; default `<model dir>/static-token-embeddings.bin`.
    pub table_path: Option<PathBuf>,
    /// The first stage's head; default the one shipped in the binary.
    pub head_path: Option<PathBuf>,
    /// Below this first-stage score (a training percentile) the text is
    /// settled without the model.
    pub lower: f64,
    /// At or above this it is settled too.
    pub upper: f64,
}

impl Default for FirstStageConfig {
    /// On, settling the 35 % lowest and 35 % highest first-stage scores:
    /// on the dev set this kept the cross-validated ROC AUC within 0.006 of
    /// the transformer's while scoring 6x more prompts per second (see the
    /// router README).
    fn default() -> Self {
        Self {
            enabled: true,
            table_path: None,
            head_path: None,
            lower: 0.35,
            upper: 0.65,
        }
    }
}

/// The head trained by `triage-router train --first-stage`, shipped in the
/// binary.
pub const SHIPPED_STATIC_HEAD: &str = include_str!("../heads/static-head.json");

/// Why the first stage cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    /// The table is missing or unreadable.
    #[error(
        "static token table {path}: {reason} (build it with `triage-router train --first-stage`)"
    )]
    Table {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The head.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// The model, while distilling.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// Band limits out of order or range.
    #[error(
        "first stage band must satisfy 0 <= lower <= upper <= 1, got lower={lower}, upper={upper}"
    )]
    Band {
        /// Lower limit.
        lower: f64,
        /// Upper limit.
        upper: f64,
    },
}

/// One vector per vocabulary token.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticTable {
    dim: usize,
    rows: Vec<f32>,
}

impl StaticTable {
    /// Runs every token id in `0..vocab_size` through the model as
    /// `[CLS] id [SEP]`.
    pub fn distill(
        model: &MiniLm,
        vocab_size: usize,
        cls: u32,
        sep: u32,
    ) -> Result<Self, EmbedError> {
        let dim = model.dim();
        let mut rows = Vec::with_capacity(vocab_size * dim);
        let ids: Vec<[u32; 3]> = (0..vocab_size as u32).map(|t| [cls, t, sep]).collect();
        for chunk in ids.chunks(DISTILL_BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|x| x.as_slice()).collect();
            for v in model.embed(&batch)? {
                rows.extend_from_slice(&v);
            }
        }
        Ok(Self { dim, rows })
    }

    /// Vector width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens in the table.
    pub fn vocab_size(&self) -> usize {
        self.rows.len() / self.dim.max(1)
    }

    /// The normalised mean of the rows of `ids` (ids outside the table are
    /// skipped). Summed in order: reproducible bit for bit.
    pub fn embed(&self, ids: &[u32]) -> Vec<f32> {
        let mut sum = vec![0f32; self.dim];
        let mut n = 0usize;
        for &id in ids {
            let start = id as usize * self.dim;
            if let Some(row) = self.rows.get(start..start + self.dim) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += v;
                }
                n += 1;
            }
        }
        if n > 0 {
            for s in &mut sum {
                *s /= n as f32;
            }
        }
        normalise(&mut sum);
        sum
    }

    /// Writes the table: magic, vocab size and width (u32 LE), then the
    /// rows as f32 LE.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Per-process temporary name: processes starting cold at once each
        // write their own copy, and the renames are atomic.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(MAGIC)?;
        f.write_all(&(self.vocab_size() as u32).to_le_bytes())?;
        f.write_all(&(self.dim as u32).to_le_bytes())?;
        for v in &self.rows {
            f.write_all(&v.to_le_bytes())?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(tmp, path)
    }

    /// Reads a table written by [`StaticTable::save`].
    pub fn load(path: &Path) -> Result<Self, StaticError> {
        let err = |reason: String| StaticError::Table {
            path: path.display().to_string(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| err(e.to_string()))?;
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(err("not a static token table".into()));
        }
        let vocab = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize;
        let dim = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default()) as usize;
        if bytes.len() != 16 + vocab * dim * 4 {
            return Err(err(format!("truncated: expected {vocab}×{dim} floats")));
        }
        let rows = bytes[16..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { dim, rows })
    }
}

/// The default table location for a model.
pub fn default_table_path(files: &ModelFiles) -> PathBuf {
    files.dir.join(TABLE_FILE)
}

/// Loads the table at `path`, distilling it from `model` first (and saving
/// it there) when the file does not exist. The table is always distilled
/// in f32 (from a model loaded for it when `model` is int8): the shipped
/// first-stage head was fit on an f32 table, and a table saved by an int8
/// router would otherwise be the one every later f32 run loads.
pub fn load_or_distill(
    model: &MiniLm,
    files: &ModelFiles,
    path: &Path,
) -> Result<StaticTable, StaticError> {
    if path.is_file() {
        return StaticTable::load(path);
    }
    let table_err = |reason: String| StaticError::Table {
        path: path.display().to_string(),
        reason,
    };
    let (vocab, cls, sep) = vocabulary(files).map_err(table_err)?;
    let f32_model;
    let model = if model.precision() == Precision::F32 {
        model
    } else {
        f32_model = MiniLm::load(files)?;
        &f32_model
    };
    let table = StaticTable::distill(model, vocab, cls, sep)?;
    // A read-only model directory (a container's mount) is no reason to
    // fail: the table is in memory, and is distilled again next start.
    if let Err(e) = table.save(path) {
        tracing::warn!(path = %path.display(), error = %e, "static token table distilled but not saved");
    }
    Ok(table)
}

/// Vocabulary size, `[CLS]` and `[SEP]` ids from the model's files.
fn vocabulary(files: &ModelFiles) -> Result<(usize, u32, u32), String> {
    let read = |p: PathBuf| -> Result<serde_json::Value, String> {
        std::fs::read_to_string(&p)
            .map_err(|e| format!("{}: {e}", p.display()))
            .and_then(|s| serde_json::from_str(&s).map_err(|e| format!("{}: {e}", p.display())))
    };
    let config = read(files.config())?;
    let tokenizer = read(files.tokenizer())?;
    let vocab = config["vocab_size"]
        .as_u64()
        .ok_or("config.json has no vocab_size")? as usize;
    let id = |t: &str| {
        tokenizer["model"]["vocab"][t]
            .as_u64()
            .map(|v| v as u32)
            .ok_or(format!("tokenizer.json has no {t}"))
    };
    Ok((vocab, id("[CLS]")?, id("[SEP]")?))
}

/// Table + head + band.
pub struct FirstStage {
    table: StaticTable,
    head: LogisticHead,
    input: HeadInput,
    lower: f64,
    upper: f64,
}

impl FirstStage {
    /// Loads the table (distilling it from `model` if absent) and the head
    /// named by `config`.
    pub fn load(
        config: &FirstStageConfig,
        files: &ModelFiles,
        model: &MiniLm,
    ) -> Result<Self, StaticError> {
        let table_path = config
            .table_path
            .clone()
            .unwrap_or_else(|| default_table_path(files));
        let table = load_or_distill(model, files, &table_path)?;
        let head = match &config.head_path {
            Some(p) => LogisticHead::load_input(p, STATIC_FEATURES)?.0,
            None => LogisticHead::from_json_input(SHIPPED_STATIC_HEAD, STATIC_FEATURES)?.0,
        };
        Self::new(table, head, config.lower, config.upper)
    }

    /// From parts; checks the band and that the head takes static vectors
    /// of the table's width (with or without form features).
    pub fn new(
        table: StaticTable,
        head: LogisticHead,
        lower: f64,
        upper: f64,
    ) -> Result<Self, StaticError> {
        if !(0.0 <= lower && lower <= upper && upper <= 1.0) {
            return Err(StaticError::Band { lower, upper });
        }
        let mismatch = || HeadError::Mismatch {
            path: "first stage head".into(),
            found: format!("{} with {} weights", head.features, head.weights.len()),
            expected: format!("{STATIC_FEATURES}[+form] for {} dimensions", table.dim),
        };
        let input = HeadInput::parse(&head.features, STATIC_FEATURES).ok_or_else(mismatch)?;
        if head.weights.len() != input.dim(table.dim) {
            return Err(mismatch().into());
        }
        Ok(Self {
            table,
            head,
            input,
            lower,
            upper,
        })
    }

    /// The head's input for model input ids (the special tokens at the
    /// ends are skipped) and their text.
    pub fn features(&self, ids: &[u32], text: &str) -> Vec<f32> {
        self.input.build(&self.table.embed(content(ids)), text)
    }

    /// The first stage's score (its head's training percentile, like the
    /// full model's) for model input ids and their text.
    pub fn score(&self, ids: &[u32], text: &str) -> f64 {
        self.head.score(&self.features(ids, text))
    }

    /// The score when it is outside the uncertain band, else `None` (the
    /// full model decides).
    pub fn settle(&self, ids: &[u32], text: &str) -> Option<f64> {
        let p = self.score(ids, text);
        self.settles(p).then_some(p)
    }

    /// The table.
    pub fn table(&self) -> &StaticTable {
        &self.table
    }

    /// The head.
    pub fn head(&self) -> &LogisticHead {
        &self.head
    }

    /// The band `[lower, upper)` handed to the full model.
    pub fn band(&self) -> (f64, f64) {
        (self.lower, self.upper)
    }

    /// Whether a first-stage score is outside the band (settled).
    pub fn settles(&self, score: f64) -> bool {
        score < self.lower || score >= self.upper
    }
}

/// Model input ids without `[CLS]` and `[SEP]`.
pub fn content(ids: &[u32]) -> &[u32] {
    if ids.len() >= 2 {
        &ids[1..ids.len() - 1]
    } else {
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> StaticTable {
        StaticTable {
            dim: 2,
            rows: vec![1.0, 0.0, 0.0, 1.0, 3.0, 4.0],
        }
    }

    #[test]
    fn embeds_as_normalised_mean_of_rows() {
        let t = table();
        assert_eq!(t.vocab_size(), 3);
        let v = t.embed(&[0, 1]);
        assert!((v[0] - v[1]).abs() < 1e-7 && (v[0] - 0.70710677).abs() < 1e-6);
        // Unknown ids are skipped.
        assert_eq!(t.embed(&[2, 99]), vec![0.6, 0.8]);
    }

    #[test]
    fn table_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        table().save(&path).unwrap();
        assert_eq!(StaticTable::load(&path).unwrap(), table());
        std::fs::write(&path, b"junk").unwrap();
        assert!(StaticTable::load(&path).is_err());
    }

    #[test]
    fn settles_only_outside_the_band() {
        let head = LogisticHead {
            format: crate::head::HEAD_FORMAT.into(),
            features: STATIC_FEATURES.into(),
            weights: vec![4.0, -4.0],
            bias: 0.0,
            l2: 0.0,
            standardised: false,
            calibration: Vec::new(),
            training: None,
        };
        let fs = FirstStage::new(table(), head, 0.2, 0.8).unwrap();
        // [CLS]/[SEP] stand-ins at the ends are skipped.
        assert!(fs.settle(&[9, 0, 9], "").unwrap() > 0.9); // (1,0) → σ(4)
        assert!(fs.settle(&[9, 1, 9], "").unwrap() < 0.1); // (0,1) → σ(-4)
        assert_eq!(fs.settle(&[9, 0, 1, 9], ""), None); // σ(0) = 0.5
        assert!(FirstStage::new(table(), fs.head.clone(), 0.9, 0.1).is_err());
        let mut short = fs.head.clone();
        short.weights.pop();
        assert!(FirstStage::new(table(), short, 0.2, 0.8).is_err());
    }
}
