//! all-MiniLM-L6-v2 sentence embeddings: the BERT encoder
//! ([`crate::encoder`]), mean pooling over each text's tokens, L2
//! normalisation — what sentence-transformers computes for this model
//! (checked against its vectors in `tests/minilm_reference.rs`).

use crate::encoder::{Encoder, EncoderConfig};
use crate::model_files::{MissingModelFile, ModelFiles};

/// Width of a MiniLM-L6 embedding.
pub const EMBEDDING_DIM: usize = 384;

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model file is absent.
    #[error(transparent)]
    Missing(#[from] MissingModelFile),
    /// `config.json` could not be read.
    #[error("cannot read model config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// candle failed (bad weights, shape mismatch).
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    /// A token id outside the model's vocabulary.
    #[error("input {index} has token id {id}; the vocabulary has {vocab}")]
    BadToken {
        /// Position in the batch.
        index: usize,
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A token sequence the model cannot take.
    #[error("input {index} has {len} tokens; the model takes 1 to {max}")]
    BadLength {
        /// Position in the batch.
        index: usize,
        /// Its token count.
        len: usize,
        /// The model's limit.
        max: usize,
    },
}

/// How the encoder's dense layers compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: sentence-transformers' vectors (cosine ≥ 0.999).
    #[default]
    F32,
    /// 8-bit integer weights and activations (AVX-512 VNNI where the CPU
    /// has it): faster, vectors slightly different (see the router README
    /// for how often a decision changes).
    Int8,
}

/// The precision a configuration asks for: one of the two, or `auto`
/// (int8 where this CPU has a SIMD int8 kernel, f32 elsewhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    /// int8 with AVX-512 VNNI or AVX2, else f32 (the scalar int8 loop is
    /// slower than f32).
    #[default]
    Auto,
    /// Always f32.
    F32,
    /// Always int8, even computed by the scalar loop.
    Int8,
}

impl PrecisionSetting {
    /// The precision this setting computes in on this CPU.
    pub fn resolve(self) -> Precision {
        match self {
            Self::F32 => Precision::F32,
            Self::Int8 => Precision::Int8,
            Self::Auto if crate::int8_has_fast_kernel() => Precision::Int8,
            Self::Auto => Precision::F32,
        }
    }
}

impl std::str::FromStr for PrecisionSetting {
    type Err = String;

    /// `auto`, `f32` or `int8`, as in the configuration (benchmarks read
    /// it from the environment).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            other => Err(format!("precision {other:?}: use auto, f32 or int8")),
        }
    }
}

impl From<Precision> for PrecisionSetting {
    fn from(p: Precision) -> Self {
        match p {
            Precision::F32 => Self::F32,
            Precision::Int8 => Self::Int8,
        }
    }
}

/// The loaded model. Load once and share: it is read-only and `Sync`.
pub struct MiniLm {
    encoder: Encoder,
    precision: Precision,
}

impl MiniLm {
    /// Loads the weights (memory-mapped, then copied into the encoder's
    /// layouts) and config, in 32-bit floats.
    pub fn load(files: &ModelFiles) -> Result<Self, EmbedError> {
        Self::load_with(files, Precision::F32)
    }

    /// Loads the model with its dense layers in `precision`.
    pub fn load_with(files: &ModelFiles, precision: Precision) -> Result<Self, EmbedError> {
        if precision == Precision::Int8 && !crate::int8_has_fast_kernel() {
            tracing::warn!(
                "precision int8 without AVX-512 VNNI or AVX2 on this CPU: computed in plain \
                 code, slower than f32"
            );
        }
        files.check()?;
        let config_path = files.config();
        let config_error = |reason: String| EmbedError::Config {
            path: config_path.display().to_string(),
            reason,
        };
        let config: EncoderConfig = std::fs::read_to_string(&config_path)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
            .map_err(config_error)?;
        Ok(Self {
            encoder: Encoder::load(&files.weights(), config, precision)?,
            precision,
        })
    }

    /// How the dense layers compute.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Embedding width (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.encoder.config().hidden_size
    }

    /// The longest input the model takes, special tokens included.
    pub fn max_positions(&self) -> usize {
        self.encoder.config().max_position_embeddings
    }

    /// Embeds token id sequences (each with its `[CLS]` and `[SEP]`).
    /// Returns one unit-length vector per input, in order.
    ///
    /// No input is padded: the encoder runs every text at its own length,
    /// passes of at most [`MAX_BATCH_TOKENS`] tokens. Each row of every
    /// kernel is computed in the same order whatever the other rows, so a
    /// text's vector does not depend on its batch companions: scores are
    /// reproducible bit for bit however requests happen to be batched (see
    /// `tests/minilm_reference.rs`).
    pub fn embed(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.check(inputs)?;
        let dim = self.dim();
        let mut out = Vec::with_capacity(inputs.len());
        for pass in passes(inputs) {
            let hidden = self.encoder.forward(pass);
            let mut rows = hidden.as_slice();
            for ids in pass {
                let (states, rest) = rows.split_at(ids.len() * dim);
                out.push(mean_pool_normalised(states, dim));
                rows = rest;
            }
        }
        Ok(out)
    }

    fn check(&self, inputs: &[&[u32]]) -> Result<(), EmbedError> {
        let (max, vocab) = (self.max_positions(), self.encoder.config().vocab_size);
        for (index, ids) in inputs.iter().enumerate() {
            if ids.is_empty() || ids.len() > max {
                return Err(EmbedError::BadLength {
                    index,
                    len: ids.len(),
                    max,
                });
            }
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(EmbedError::BadToken { index, id, vocab });
            }
        }
        Ok(())
    }
}

/// Upper bound on tokens per forward pass. It bounds memory (the
/// feed-forward activations are tokens × 1536 floats) and keeps a pass's
/// activations in the last-level cache: at 2048 tokens they are 12 MiB,
/// and batches of 32 prompts of 512 tokens ran about 20% faster than in
/// passes of 8192 tokens (50 MiB) on a 2-core EPYC with 32 MiB of L3,
/// 128-token batches the same (router README, "Speed").
pub const MAX_BATCH_TOKENS: usize = 2048;

/// Consecutive runs of inputs of at most [`MAX_BATCH_TOKENS`] tokens (an
/// input longer than that alone).
fn passes<'a, 'b>(inputs: &'a [&'b [u32]]) -> Vec<&'a [&'b [u32]]> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, ids) in inputs.iter().enumerate() {
        if tokens + ids.len() > MAX_BATCH_TOKENS && i > start {
            out.push(&inputs[start..i]);
            (start, tokens) = (i, 0);
        }
        tokens += ids.len();
    }
    if start < inputs.len() {
        out.push(&inputs[start..]);
    }
    out
}

/// Mean of the token vectors, scaled to unit length (sentence-transformers'
/// Pooling(mean) + Normalize). Summed in a fixed order so the result is
/// reproducible bit for bit.
/// `states` holds one row of `dim` values per token.
pub fn mean_pool_normalised(states: &[f32], dim: usize) -> Vec<f32> {
    let mut sum = vec![0f32; dim];
    for token in states.chunks_exact(dim) {
        for (s, v) in sum.iter_mut().zip(token) {
            *s += v;
        }
    }
    let n = (states.len() / dim.max(1)).max(1) as f32;
    for s in &mut sum {
        *s /= n;
    }
    normalise(&mut sum);
    sum
}

/// Scales `v` to unit L2 norm in place (left as is when it is all zeros).
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v {
        *x /= norm;
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_precision_is_int8_only_with_a_simd_kernel() {
        let want = if crate::int8_has_fast_kernel() {
            Precision::Int8
        } else {
            Precision::F32
        };
        assert_eq!(PrecisionSetting::Auto.resolve(), want);
        assert_eq!(PrecisionSetting::F32.resolve(), Precision::F32);
        assert_eq!(PrecisionSetting::Int8.resolve(), Precision::Int8);
        assert_eq!(PrecisionSetting::default(), PrecisionSetting::Auto);
        assert_eq!(
            PrecisionSetting::from(Precision::Int8),
            PrecisionSetting::Int8
        );
        assert_eq!("int8".parse(), Ok(PrecisionSetting::Int8));
        assert_eq!("auto".parse(), Ok(PrecisionSetting::Auto));
        let err = "fp16".parse::<PrecisionSetting>().unwrap_err();
        assert!(err.contains("fp16") && err.contains("auto"), "{err}");
    }

    #[test]
    fn pooling_averages_then_normalises() {
        let v = mean_pool_normalised(&[3.0, 0.0, 3.0, 8.0], 2);
        // mean (3, 4) → (0.6, 0.8)
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!((cosine(&v, &[3.0, 4.0]) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn passes_hold_at_most_the_token_budget() {
        let (long, short) = (vec![0u32; MAX_BATCH_TOKENS - 10], vec![0u32; 20]);
        let inputs: Vec<&[u32]> = vec![&short, &long, &short, &short];
        let p = passes(&inputs);
        assert_eq!(p.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![1, 1, 2]);
        assert_eq!(passes(&[]).len(), 0);
    }

    #[test]
    fn zero_vector_stays_zero() {
        let mut v = vec![0.0f32; 4];
        normalise(&mut v);
        assert_eq!(v, vec![0.0; 4]);
    }
}
