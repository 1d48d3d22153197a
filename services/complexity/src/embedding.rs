//! all-MiniLM-L6-v2 sentence embeddings in candle: BERT forward pass, mean
//! pooling over the attention mask, L2 normalisation — what
//! sentence-transformers computes for this model (checked against its
//! vectors in `tests/minilm_reference.rs`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

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

/// The loaded model. Load once and share: it is read-only and `Sync`.
pub struct MiniLm {
    model: BertModel,
    device: Device,
    hidden: usize,
    max_positions: usize,
}

impl MiniLm {
    /// Loads the weights and config (memory-mapped) on the CPU.
    pub fn load(files: &ModelFiles) -> Result<Self, EmbedError> {
        files.check()?;
        let config_path = files.config();
        let config_error = |reason: String| EmbedError::Config {
            path: config_path.display().to_string(),
            reason,
        };
        let raw: serde_json::Value = std::fs::read_to_string(&config_path)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
            .map_err(config_error)?;
        let config: Config =
            serde_json::from_value(raw.clone()).map_err(|e| config_error(e.to_string()))?;
        let hidden = raw["hidden_size"].as_u64().unwrap_or(EMBEDDING_DIM as u64) as usize;
        let max_positions = raw["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        let device = Device::Cpu;
        // SAFETY: the file is memory-mapped read-only; nothing in this
        // process writes it, and the set-up never rewrites it in place.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[files.weights()], DType::F32, &device)?
        };
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            device,
            hidden,
            max_positions,
        })
    }

    /// Embedding width (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.hidden
    }

    /// The longest input the model takes, special tokens included.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Embeds token id sequences (each with its `[CLS]` and `[SEP]`).
    /// Returns one unit-length vector per input, in order.
    ///
    /// Inputs are grouped by their length rounded up to [`PAD_MULTIPLE`]
    /// and each group runs padded to that length (in chunks of at most
    /// [`MAX_BATCH_TOKENS`] tokens). The padded length is a function of the
    /// input alone, and candle's kernels give the same bits for a row
    /// whatever the number of rows, so a text's vector does not depend on
    /// its batch companions: scores are reproducible bit for bit however
    /// requests happen to be batched (see `tests/minilm_reference.rs`).
    pub fn embed(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        for (index, ids) in inputs.iter().enumerate() {
            if ids.is_empty() || ids.len() > self.max_positions {
                return Err(EmbedError::BadLength {
                    index,
                    len: ids.len(),
                    max: self.max_positions,
                });
            }
        }
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, ids) in inputs.iter().enumerate() {
            groups.entry(padded_len(ids.len())).or_default().push(i);
        }
        let mut out = vec![Vec::new(); inputs.len()];
        for (len, members) in groups {
            let rows_per_chunk = (MAX_BATCH_TOKENS / len).max(1);
            for chunk in members.chunks(rows_per_chunk) {
                let batch: Vec<&[u32]> = chunk.iter().map(|&i| inputs[i]).collect();
                let vectors = self.forward_exact(&batch, len)?;
                for (&i, v) in chunk.iter().zip(vectors) {
                    out[i] = v;
                }
            }
        }
        Ok(out)
    }

    /// One forward pass with every input padded to exactly `len` tokens
    /// (no bucketing); the static-table distillation uses it directly.
    pub(crate) fn forward_exact(
        &self,
        inputs: &[&[u32]],
        len: usize,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batch = inputs.len();
        let mut ids = vec![0u32; batch * len];
        let mut mask = vec![0u32; batch * len];
        for (row, input) in inputs.iter().enumerate() {
            ids[row * len..row * len + input.len()].copy_from_slice(input);
            mask[row * len..row * len + input.len()].fill(1);
        }
        let ids_t = Tensor::from_vec(ids, (batch, len), &self.device)?;
        let mask_t = Tensor::from_vec(mask, (batch, len), &self.device)?;
        let type_ids = ids_t.zeros_like()?;
        let hidden = self.model.forward(&ids_t, &type_ids, Some(&mask_t))?;
        let hidden: Vec<Vec<Vec<f32>>> = hidden.to_vec3()?;
        Ok(hidden
            .iter()
            .zip(inputs)
            .map(|(states, input)| mean_pool_normalised(&states[..input.len()]))
            .collect())
    }
}

/// Inputs are padded to a multiple of this many tokens.
pub const PAD_MULTIPLE: usize = 16;

/// Upper bound on padded tokens per forward pass, which bounds memory
/// (attention is batch × 12 heads × len² floats).
pub const MAX_BATCH_TOKENS: usize = 8192;

/// The length an input of `len` tokens runs at.
pub fn padded_len(len: usize) -> usize {
    len.div_ceil(PAD_MULTIPLE) * PAD_MULTIPLE
}

/// Mean of the token vectors, scaled to unit length (sentence-transformers'
/// Pooling(mean) + Normalize). Summed in a fixed order so the result is
/// reproducible bit for bit.
pub fn mean_pool_normalised(states: &[Vec<f32>]) -> Vec<f32> {
    let dim = states.first().map_or(0, Vec::len);
    let mut sum = vec![0f32; dim];
    for token in states {
        for (s, v) in sum.iter_mut().zip(token) {
            *s += v;
        }
    }
    let n = states.len().max(1) as f32;
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
    fn pooling_averages_then_normalises() {
        let v = mean_pool_normalised(&[vec![3.0, 0.0], vec![3.0, 8.0]]);
        // mean (3, 4) → (0.6, 0.8)
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!((cosine(&v, &[3.0, 4.0]) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn padding_rounds_up_to_the_multiple() {
        assert_eq!(padded_len(1), 16);
        assert_eq!(padded_len(16), 16);
        assert_eq!(padded_len(17), 32);
        assert_eq!(padded_len(512), 512);
    }

    #[test]
    fn zero_vector_stays_zero() {
        let mut v = vec![0.0f32; 4];
        normalise(&mut v);
        assert_eq!(v, vec![0.0; 4]);
    }
}
