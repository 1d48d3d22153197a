//! The scoring pipeline, synchronous parts: truncation, rules, cache,
//! first stage, embedding and head, then the blend with an LLM score the
//! caller obtained (the router does that asynchronously).
//!
//! The service and the offline `score`/`calibrate` commands all go through
//! this type, so offline and live decisions agree.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

use crate::blend::{Blend, BlendError, BlendWeights, Decision};
use crate::cache::{cache_key, CacheKey, CachedScore, ScoreCache};
use crate::embedding::{EmbedError, MiniLm, Precision, PrecisionSetting};
use crate::head::{HeadError, LogisticHead};
use crate::head_input::HeadInput;
use crate::model_files::ModelFiles;
use crate::rules::{InvalidRule, RuleConfig, RuleMatch, RuleSet};
use crate::share_threshold::{ShareConfig, TrackedThreshold};
use crate::static_embedding::{FirstStage, FirstStageConfig, StaticError};
use crate::truncation::{TokenizedText, Truncator};

/// The feature tag of heads trained on MiniLM sentence embeddings (any
/// truncation: the vector space is the same).
pub const MINILM_FEATURES: &str = "all-MiniLM-L6-v2/mean/l2";

/// Everything that shapes a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerConfig {
    /// Directory of model.safetensors, tokenizer.json, config.json;
    /// default `$TRIAGE_CACHE/models/all-MiniLM-L6-v2`.
    pub model_dir: Option<PathBuf>,
    /// The trained head (JSON); default: the head shipped in the binary.
    pub head_path: Option<PathBuf>,
    /// Model tokens scored, `[CLS]`/`[SEP]` included (at most 512).
    pub max_tokens: usize,
    /// Rules that force tier 2.
    pub rules: RuleConfig,
    /// Blend weights of embedding and LLM scores.
    pub weights: BlendWeights,
    /// Tier 2 when the blended score is at or above this.
    pub threshold: f64,
    /// Keep a share of recent traffic at or above the threshold instead
    /// (`threshold` until enough scores are seen).
    pub share: ShareConfig,
    /// Scores remembered for repeated texts (0 disables the cache).
    pub cache_capacity: usize,
    /// The static-embedding first stage.
    pub first_stage: FirstStageConfig,
    /// How the encoder computes: `auto` (int8 where the CPU has a SIMD int8
    /// kernel), `f32` (sentence-transformers' vectors) or `int8` (faster;
    /// see the router README for how many decisions move). Fitting
    /// (training heads, distilling the static table) is always done in f32.
    pub precision: PrecisionSetting,
}

/// The threshold shipped as the default; see the router README for the
/// evidence behind it.
pub const DEFAULT_THRESHOLD: f64 = 0.65;

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            head_path: None,
            max_tokens: 512,
            rules: RuleConfig::default(),
            weights: BlendWeights::default(),
            threshold: DEFAULT_THRESHOLD,
            share: ShareConfig::default(),
            cache_capacity: 10_000,
            first_stage: FirstStageConfig::default(),
            precision: PrecisionSetting::Auto,
        }
    }
}

/// Why the scorer cannot be built or a text cannot be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Model or tokenizer problem.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The head file.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// A keyword rule.
    #[error(transparent)]
    Rule(#[from] InvalidRule),
    /// Weights or threshold.
    #[error(transparent)]
    Blend(#[from] BlendError),
    /// The first stage.
    #[error(transparent)]
    FirstStage(#[from] StaticError),
    /// A setting out of range.
    #[error("invalid scorer setting: {0}")]
    Config(String),
}

/// A text after truncation and rules: cheap, done per message.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The kept tokens and text.
    pub tokens: TokenizedText,
    /// The rule that fired, if any (then no embedding is needed).
    pub rule: Option<RuleMatch>,
    /// Cache key of the kept text.
    pub key: CacheKey,
}

/// Where an embedding-stage score came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The transformer and the head.
    Model,
    /// The static first stage, confident enough to settle it.
    FirstStage,
}

/// The embedding stage's result for one text.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingScore {
    /// The head's P(needs tier 2) as a training percentile (see
    /// [`LogisticHead::score`]).
    pub score: f64,
    /// Which stage produced it.
    pub source: Source,
    /// Whether it came from the cache.
    pub cached: bool,
    /// A cached LLM score for the same text, if any.
    pub cached_llm: Option<f64>,
    /// The version of the head that gave a [`Source::Model`] score.
    pub head: Option<Arc<str>>,
}

/// The head in force, its input and its version, swapped whole (see
/// [`Scorer::swap_head`]) so a batch is scored by exactly one head.
#[derive(Debug)]
pub struct HeadSlot {
    /// The head.
    pub head: LogisticHead,
    /// What it takes.
    pub input: HeadInput,
    /// `sha256:` and the first 12 hex digits of its JSON: the same head
    /// has the same version on every router.
    pub version: Arc<str>,
    /// Counts swaps, so cached scores of an earlier head are not reused.
    generation: u64,
}

impl std::ops::Deref for HeadSlot {
    type Target = LogisticHead;
    fn deref(&self) -> &LogisticHead {
        &self.head
    }
}

/// The version of a head: a digest of its JSON.
pub fn head_version(head: &LogisticHead) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(head).expect("a head serialises");
    let digest = Sha256::digest(&json);
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What the LLM self-rating gave.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmScore {
    /// Not configured.
    Off,
    /// The rating, digit / 10.
    Score(f64),
    /// Timed out, failed or unparsable: the embedding stands alone.
    Failed(String),
}

/// The head's score for an embedding of a prepared text.
fn score_with(head: &HeadSlot, embedding: &[f32], p: &Prepared) -> f64 {
    head.head
        .score(&head.input.build(embedding, &p.tokens.text))
}

/// The pipeline.
pub struct Scorer {
    config: ScorerConfig,
    truncator: Truncator,
    rules: RuleSet,
    model: MiniLm,
    files: ModelFiles,
    /// The model in f32 when `model` is not, loaded on first use.
    f32_model: OnceLock<MiniLm>,
    head: RwLock<Arc<HeadSlot>>,
    first_stage: Option<FirstStage>,
    blend: Blend,
    threshold: TrackedThreshold,
    cache: ScoreCache,
}

/// The head trained by `triage-router train` on the dev set, shipped in the
/// binary so the router works without extra files.
pub const SHIPPED_HEAD: &str = include_str!("../heads/minilm-head.json");

impl Scorer {
    /// Loads the model, head, rules and first stage.
    pub fn new(config: ScorerConfig) -> Result<Self, ScoreError> {
        let files = config
            .model_dir
            .clone()
            .map(ModelFiles::new)
            .unwrap_or_else(ModelFiles::default_minilm);
        let model = MiniLm::load_with(&files, config.precision.resolve())?;
        let (head, _) = match &config.head_path {
            Some(p) => LogisticHead::load_input(p, MINILM_FEATURES)?,
            None => LogisticHead::from_json_input(SHIPPED_HEAD, MINILM_FEATURES)?,
        };
        let first_stage = if config.first_stage.enabled {
            Some(FirstStage::load(&config.first_stage, &files, &model)?)
        } else {
            None
        };
        Self::from_parts(config, &files, model, head, first_stage)
    }

    /// Builds from loaded parts (training and benchmarks reuse a model).
    pub fn from_parts(
        config: ScorerConfig,
        files: &ModelFiles,
        model: MiniLm,
        head: LogisticHead,
        first_stage: Option<FirstStage>,
    ) -> Result<Self, ScoreError> {
        if config.max_tokens < 3 || config.max_tokens > model.max_positions() {
            return Err(ScoreError::Config(format!(
                "max_tokens must be within 3..={}, got {}",
                model.max_positions(),
                config.max_tokens
            )));
        }
        let slot = Self::slot_for(&model, head, 0)?;
        let truncator = Truncator::from_file(&files.tokenizer(), config.max_tokens)?;
        let rules = RuleSet::new(&config.rules)?;
        let blend = Blend::new(config.weights, config.threshold)?;
        config
            .share
            .validate("scoring.share")
            .map_err(ScoreError::Config)?;
        let threshold = TrackedThreshold::new(config.threshold, &config.share);
        let cache = ScoreCache::new(config.cache_capacity);
        Ok(Self {
            config,
            truncator,
            rules,
            model,
            files: files.clone(),
            f32_model: OnceLock::new(),
            head: RwLock::new(Arc::new(slot)),
            first_stage,
            blend,
            threshold,
            cache,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ScorerConfig {
        &self.config
    }

    /// The blend (weights and the configured threshold).
    pub fn blend(&self) -> &Blend {
        &self.blend
    }

    /// The threshold decisions are compared with now: the configured one,
    /// or the one keeping `share.target` of recent scores.
    pub fn threshold(&self) -> f64 {
        self.threshold.current()
    }

    /// The loaded model, in the configured precision.
    pub fn model(&self) -> &MiniLm {
        &self.model
    }

    /// The model in f32: the scorer's own when it computes in f32, else
    /// loaded once on first use. Vectors that must match what heads were
    /// fit on outside the router (the verifier's answers, which the worker
    /// embeds in f32) come from it.
    pub fn f32_model(&self) -> Result<&MiniLm, EmbedError> {
        if self.model.precision() == Precision::F32 {
            return Ok(&self.model);
        }
        if let Some(m) = self.f32_model.get() {
            return Ok(m);
        }
        let model = MiniLm::load(&self.files)?;
        Ok(self.f32_model.get_or_init(|| model))
    }

    /// Checks `head` against the model and wraps it.
    fn slot_for(
        model: &MiniLm,
        head: LogisticHead,
        generation: u64,
    ) -> Result<HeadSlot, ScoreError> {
        let input = HeadInput::parse(&head.features, MINILM_FEATURES).ok_or_else(|| {
            ScoreError::Config(format!(
                "head is for {:?}, not MiniLM embeddings",
                head.features
            ))
        })?;
        if head.weights.len() != input.dim(model.dim()) {
            return Err(ScoreError::Config(format!(
                "head has {} weights, its input {:?} has {} dimensions",
                head.weights.len(),
                head.features,
                input.dim(model.dim())
            )));
        }
        let version = head_version(&head).into();
        Ok(HeadSlot {
            head,
            input,
            version,
            generation,
        })
    }

    /// The head in use (a snapshot: a swap does not change it).
    pub fn head(&self) -> Arc<HeadSlot> {
        self.head.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `head` in force for every batch that starts from now on, after
    /// checking it fits the model; batches already scoring finish with the
    /// head they started with. Returns the new version.
    pub fn swap_head(&self, head: LogisticHead) -> Result<Arc<str>, ScoreError> {
        let mut slot = self.head.write().unwrap_or_else(|e| e.into_inner());
        let new = Self::slot_for(&self.model, head, slot.generation + 1)?;
        let version = new.version.clone();
        *slot = Arc::new(new);
        // A new head scores on a scale of its own: the share starts over.
        self.threshold.reset();
        Ok(version)
    }

    /// What the head takes: the embedding, maybe with form features.
    pub fn head_input(&self) -> HeadInput {
        self.head().input
    }

    /// The head's score for an embedding of a prepared text.
    pub fn head_score(&self, embedding: &[f32], p: &Prepared) -> f64 {
        score_with(&self.head(), embedding, p)
    }

    /// The first stage, when enabled.
    pub fn first_stage(&self) -> Option<&FirstStage> {
        self.first_stage.as_ref()
    }

    /// The truncator.
    pub fn truncator(&self) -> &Truncator {
        &self.truncator
    }

    /// Entries in the score cache.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Steps 1–2: truncation and rules.
    pub fn prepare(&self, text: &str) -> Result<Prepared, ScoreError> {
        let tokens = self.truncator.truncate(text)?;
        let rule = self.rules.first_match(&tokens.text);
        let key = cache_key(&tokens.text);
        Ok(Prepared { tokens, rule, key })
    }

    /// Step 3 for a batch: cache, first stage, then one model pass for the
    /// rest. Texts settled by a rule get no score (`None`).
    pub fn embedding_scores(
        &self,
        batch: &[&Prepared],
    ) -> Result<Vec<Option<EmbeddingScore>>, ScoreError> {
        let head = self.head();
        let mut out: Vec<Option<EmbeddingScore>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            if p.rule.is_some() {
                continue;
            }
            match self.settle_without_model(p, &head) {
                Some(e) => out[i] = Some(e),
                None => pending.push(i),
            }
        }
        if !pending.is_empty() {
            let ids: Vec<&[u32]> = pending
                .iter()
                .map(|&i| batch[i].tokens.ids.as_slice())
                .collect();
            let vectors = self.model.embed(&ids)?;
            for (&i, v) in pending.iter().zip(&vectors) {
                let p = score_with(&head, v, batch[i]);
                out[i] = Some(self.fresh(batch[i], p, Source::Model, &head));
            }
        }
        Ok(out)
    }

    /// Step 3 without the transformer: the cached score, or the first
    /// stage's when it settles the text; `None` when the model is needed
    /// (or a rule fired, and no score is needed at all).
    pub fn score_without_model(&self, p: &Prepared) -> Option<EmbeddingScore> {
        self.settle_without_model(p, &self.head())
    }

    /// The first stage's score whatever its band: what decides a text the
    /// transformer cannot take in time (the router's `model_budget`).
    /// `None` without a first stage or when a rule fired. Not cached, so
    /// the text gets the transformer next time if there is time.
    pub fn first_stage_score(&self, p: &Prepared) -> Option<EmbeddingScore> {
        if p.rule.is_some() {
            return None;
        }
        let score = self
            .first_stage
            .as_ref()?
            .score(&p.tokens.ids, &p.tokens.text);
        Some(EmbeddingScore {
            score,
            source: Source::FirstStage,
            cached: false,
            cached_llm: None,
            head: None,
        })
    }

    /// [`Self::score_without_model`] with the batch's head: a cached score
    /// of another head is not reused.
    fn settle_without_model(&self, p: &Prepared, head: &HeadSlot) -> Option<EmbeddingScore> {
        if p.rule.is_some() {
            return None;
        }
        if let Some(hit) = self.cache.get(&p.key) {
            if hit.settled_by_first_stage || hit.head == head.generation {
                return Some(EmbeddingScore {
                    score: hit.embedding,
                    source: if hit.settled_by_first_stage {
                        Source::FirstStage
                    } else {
                        Source::Model
                    },
                    cached: true,
                    cached_llm: hit.llm,
                    head: (!hit.settled_by_first_stage).then(|| head.version.clone()),
                });
            }
        }
        let p1 = self
            .first_stage
            .as_ref()?
            .settle(&p.tokens.ids, &p.tokens.text)?;
        Some(self.fresh(p, p1, Source::FirstStage, head))
    }

    fn fresh(&self, p: &Prepared, score: f64, source: Source, head: &HeadSlot) -> EmbeddingScore {
        let by_model = source == Source::Model;
        self.cache.put(
            p.key,
            CachedScore {
                embedding: score,
                settled_by_first_stage: !by_model,
                llm: None,
                head: head.generation,
            },
        );
        EmbeddingScore {
            score,
            source,
            cached: false,
            cached_llm: None,
            head: by_model.then(|| head.version.clone()),
        }
    }

    /// Remembers a successful LLM rating for a text.
    pub fn remember_llm(&self, p: &Prepared, embedding: &EmbeddingScore, llm: f64) {
        self.cache.put(
            p.key,
            CachedScore {
                embedding: embedding.score,
                settled_by_first_stage: embedding.source == Source::FirstStage,
                llm: Some(llm),
                head: self.head().generation,
            },
        );
    }

    /// Steps 4–5: the decision from the embedding score and the LLM's.
    /// `embedding` is `None` exactly when a rule fired.
    pub fn decide(
        &self,
        p: &Prepared,
        embedding: Option<&EmbeddingScore>,
        llm: &LlmScore,
    ) -> Decision {
        self.decide_against(p, embedding, llm, None)
    }

    /// [`Self::decide`] for a text the transformer had no time for, given
    /// its first-stage score: compared with `band_threshold` (the score
    /// that keeps the transformer's share of the band, see
    /// [`crate::band_share`]) when known, else with the routing threshold.
    /// The text still counts in a kept share's window.
    pub fn decide_over_budget(
        &self,
        p: &Prepared,
        first_stage: &EmbeddingScore,
        band_threshold: Option<f64>,
    ) -> Decision {
        self.decide_against(p, Some(first_stage), &LlmScore::Off, band_threshold)
    }

    fn decide_against(
        &self,
        p: &Prepared,
        embedding: Option<&EmbeddingScore>,
        llm: &LlmScore,
        band_threshold: Option<f64>,
    ) -> Decision {
        let mut reasons = Vec::new();
        if p.tokens.truncated {
            reasons.push(format!("truncated:{}", self.truncator.max_tokens()));
        }
        if let Some(rule) = &p.rule {
            // Forced prompts are part of the share kept, as in training.
            let t = self.threshold.observe(1.0);
            return self.blend.at(t).forced_tier2(reasons, rule.reason());
        }
        let Some(embedding) = embedding else {
            // Only a rule skips the embedding; anything else is a bug, and
            // a bug pays for tier 2 rather than risk quality.
            return self
                .blend
                .forced_tier2(reasons, "router_failure:unscored".into());
        };
        reasons.push(match embedding.source {
            Source::Model => format!("embedding={:.4}", embedding.score),
            Source::FirstStage => format!("first_stage={:.4}", embedding.score),
        });
        if let Some(version) = &embedding.head {
            reasons.push(format!("head={version}"));
        }
        let llm_value = match llm {
            LlmScore::Off => None,
            LlmScore::Score(v) => {
                reasons.push(format!("llm={v:.2}"));
                Some(*v)
            }
            LlmScore::Failed(why) => {
                reasons.push(format!("llm_failed:{why}"));
                None
            }
        };
        let t = self
            .threshold
            .observe(self.blend.combine(embedding.score, llm_value));
        let t = match band_threshold {
            Some(band) => {
                reasons.push(format!("band_threshold={band:.4}"));
                band
            }
            None => {
                if self.threshold.keeps_share() {
                    reasons.push(format!("share_threshold={t:.4}"));
                }
                t
            }
        };
        self.blend.at(t).decide(embedding.score, llm_value, reasons)
    }

    /// The whole pipeline for texts, without an LLM (offline scoring and
    /// tests). Errors are per text.
    pub fn score_texts(&self, texts: &[&str]) -> Vec<Result<Decision, ScoreError>> {
        let prepared: Vec<Result<Prepared, ScoreError>> =
            texts.iter().map(|t| self.prepare(t)).collect();
        let ok: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        let scores = match self.embedding_scores(&ok) {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                return texts
                    .iter()
                    .map(|_| Err(ScoreError::Config(format!("embedding failed: {msg}"))))
                    .collect();
            }
        };
        let mut scores = scores.into_iter();
        prepared
            .into_iter()
            .map(|p| {
                let p = p?;
                let e = scores.next().flatten();
                Ok(self.decide(&p, e.as_ref(), &LlmScore::Off))
            })
            .collect()
    }
}
