//! MiniLM's BERT encoder on plain buffers: the batch's token rows are laid
//! end to end with no padding, every dense layer is one matrix product over
//! all of them (query, key and value fused into one), and attention runs
//! per sequence ([`crate::attention`]). The weights are read once from
//! `model.safetensors` (memory-mapped by candle) and kept in the layouts
//! the products want.
//!
//! Each stage is a `tracing` span at TRACE level, so a timing subscriber
//! shows where a pass spends its time (the `embed_speed` bench's
//! `--profile`).

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use serde::Deserialize;

use crate::attention::{attention, Span};
use crate::embedding::Precision;
use crate::int8_dense::Int8Dense;
use crate::kernels::{gelu, Dense, LayerNorm};

/// The `config.json` fields the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    /// Width of a token's hidden state (384 for MiniLM-L6).
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// The longest input, special tokens included.
    pub max_position_embeddings: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Must be `gelu` (erf GELU), the only activation implemented.
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

/// A dense layer in the loaded precision.
enum Linear {
    F32(Dense),
    Int8(Int8Dense),
}

impl Linear {
    fn new(weight: &[f32], bias: Vec<f32>, precision: Precision) -> Self {
        match precision {
            Precision::F32 => Linear::F32(Dense::from_torch(weight, bias)),
            Precision::Int8 => Linear::Int8(Int8Dense::from_torch(weight, bias)),
        }
    }

    fn forward(&self, x: &[f32]) -> Vec<f32> {
        match self {
            Linear::F32(d) => d.forward(x),
            Linear::Int8(d) => d.forward(x),
        }
    }
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

/// The loaded encoder. Read-only, so one is shared by every thread.
pub(crate) struct Encoder {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    norm: LayerNorm,
    layers: Vec<Layer>,
    config: EncoderConfig,
}

/// The weights file with a name prefix, like PyTorch's module paths.
struct Weights<'a> {
    file: &'a MmapedSafetensors,
    prefix: String,
    precision: Precision,
}

impl Weights<'_> {
    fn pp(&self, name: &str) -> Self {
        Weights {
            file: self.file,
            prefix: format!("{}{name}.", self.prefix),
            precision: self.precision,
        }
    }

    /// A tensor's values as f32, checked against the shape the config implies.
    fn get(&self, shape: &[usize], name: &str) -> candle_core::Result<Vec<f32>> {
        let name = format!("{}{name}", self.prefix);
        let t = self.file.load(&name, &Device::Cpu)?;
        if t.dims() != shape {
            candle_core::bail!("{name} has shape {:?}, the config says {shape:?}", t.dims());
        }
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    }

    fn dense(&self, outputs: usize, inputs: usize) -> candle_core::Result<Linear> {
        Ok(Linear::new(
            &self.get(&[outputs, inputs], "weight")?,
            self.get(&[outputs], "bias")?,
            self.precision,
        ))
    }

    fn layer_norm(&self, dim: usize, eps: f64) -> candle_core::Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&[dim], "weight")?,
            self.get(&[dim], "bias")?,
            eps as f32,
        ))
    }
}

impl Encoder {
    /// Reads the weights (PyTorch's BERT names, no `bert.` prefix).
    pub(crate) fn load(
        weights: &std::path::Path,
        config: EncoderConfig,
        precision: Precision,
    ) -> candle_core::Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!(
                "hidden_act {:?} is not supported (only gelu)",
                config.hidden_act
            );
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            candle_core::bail!("hidden_size is not a multiple of num_attention_heads");
        }
        // SAFETY: the file is memory-mapped read-only; nothing in this
        // process writes it, and the set-up never rewrites it in place.
        let file = unsafe { MmapedSafetensors::new(weights)? };
        let root = Weights {
            file: &file,
            prefix: String::new(),
            precision,
        };
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let emb = root.pp("embeddings");
        let token_types = emb
            .get(&[2, h], "token_type_embeddings.weight")
            .or_else(|_| emb.get(&[1, h], "token_type_embeddings.weight"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Self::load_layer(&root.pp(&format!("encoder.layer.{i}")), &config))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let positions = config.max_position_embeddings;
        Ok(Self {
            word: emb.get(&[config.vocab_size, h], "word_embeddings.weight")?,
            position: emb.get(&[positions, h], "position_embeddings.weight")?,
            token_type: token_types[..h].to_vec(),
            norm: emb.pp("LayerNorm").layer_norm(h, eps)?,
            layers,
            config,
        })
    }

    fn load_layer(w: &Weights, c: &EncoderConfig) -> candle_core::Result<Layer> {
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let attn = w.pp("attention");
        let part = |name: &str| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let p = attn.pp("self").pp(name);
            Ok((p.get(&[h, h], "weight")?, p.get(&[h], "bias")?))
        };
        let (q, k, v) = (part("query")?, part("key")?, part("value")?);
        let attn_out = attn.pp("output");
        Ok(Layer {
            qkv: Linear::new(
                &[q.0, k.0, v.0].concat(),
                [q.1, k.1, v.1].concat(),
                w.precision,
            ),
            attention_out: attn_out.pp("dense").dense(h, h)?,
            attention_norm: attn_out.pp("LayerNorm").layer_norm(h, eps)?,
            ffn_in: w
                .pp("intermediate")
                .pp("dense")
                .dense(c.intermediate_size, h)?,
            ffn_out: w.pp("output").pp("dense").dense(h, c.intermediate_size)?,
            ffn_norm: w.pp("output").pp("LayerNorm").layer_norm(h, eps)?,
        })
    }

    pub(crate) fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The last layer's hidden state of every token of every input, rows
    /// in input order. The caller checks lengths (1 to
    /// `max_position_embeddings`) and ids (below `vocab_size`).
    pub(crate) fn forward(&self, inputs: &[&[u32]]) -> Vec<f32> {
        let mut spans = Vec::with_capacity(inputs.len());
        let mut start = 0;
        for ids in inputs {
            spans.push(Span {
                start,
                len: ids.len(),
            });
            start += ids.len();
        }
        let mut x = self.embed_tokens(inputs, start);
        for layer in &self.layers {
            x = self.run_layer(layer, &x, &spans);
        }
        x
    }

    fn embed_tokens(&self, inputs: &[&[u32]], rows: usize) -> Vec<f32> {
        let _span = tracing::trace_span!("embeddings").entered();
        let h = self.config.hidden_size;
        let mut x = Vec::with_capacity(rows * h);
        for ids in inputs {
            for (pos, &id) in ids.iter().enumerate() {
                let word = &self.word[id as usize * h..][..h];
                let position = &self.position[pos * h..][..h];
                x.extend(
                    word.iter()
                        .zip(position)
                        .zip(&self.token_type)
                        .map(|((w, p), t)| w + p + t),
                );
            }
        }
        self.norm.norm(&mut x);
        x
    }

    fn run_layer(&self, layer: &Layer, x: &[f32], spans: &[Span]) -> Vec<f32> {
        use tracing::trace_span;
        let heads = self.config.num_attention_heads;
        let head_dim = self.config.hidden_size / heads;
        let qkv = trace_span!("qkv").in_scope(|| layer.qkv.forward(x));
        let context = trace_span!("attention").in_scope(|| attention(&qkv, spans, heads, head_dim));
        let hidden = trace_span!("attention-out").in_scope(|| {
            let mut h = layer.attention_out.forward(&context);
            layer.attention_norm.add_and_norm(&mut h, x);
            h
        });
        let mut inner = trace_span!("ffn-in").in_scope(|| layer.ffn_in.forward(&hidden));
        trace_span!("gelu").in_scope(|| gelu(&mut inner));
        trace_span!("ffn-out").in_scope(|| {
            let mut out = layer.ffn_out.forward(&inner);
            layer.ffn_norm.add_and_norm(&mut out, &hidden);
            out
        })
    }
}
