//! The verifier: P(tier 1's answer is poor) from the question and the
//! answer, and the combined policy's two thresholds.
//!
//! Its input, named by the head's `features` tag, is the answer-form
//! features ([`crate::answer_form`]), optionally the answer checks
//! ([`crate::answer_check`]: its arithmetic, the option it chose, its final
//! number) and the question's prompt-form features ([`crate::prompt_form`]),
//! optionally the token-logprob
//! features ([`crate::answer_confidence`]) and optionally the MiniLM
//! embedding of the answer's last [`ANSWER_TAIL_CHARS`] characters (where
//! a chain of thought concludes), computed by the router's own model
//! ([`crate::MiniLm`]). The head is the router's logistic head, fitted on
//! `small_ok = false` by `triage-router train-verifier`, its output mapped
//! to the training percentile like the router's. A file may also hold a
//! head per [`QuestionKind`] (multiple choice, numeric, open), all on the
//! same input and mapping their probabilities through the same pooled
//! percentiles, so one threshold means the same for every kind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::answer_check::{answer_check_features, ANSWER_CHECK_DIM, ANSWER_CHECK_FEATURES};
use crate::answer_confidence::{logprob_features, LOGPROB_DIM, LOGPROB_FEATURES};
use crate::answer_form::{answer_form_features, ANSWER_FORM_DIM, ANSWER_FORM_FEATURES};
use crate::embedding::{EmbedError, MiniLm};
use crate::head::{HeadError, LogisticHead};
use crate::prompt_form::{form_features, FORM_DIM, FORM_FEATURES};
use crate::question_kind::QuestionKind;
use crate::share_threshold::ShareConfig;
use crate::truncation::{TokenizedText, Truncator};

/// The weights file's format tag (`/2` added the per-kind heads).
pub const VERIFIER_FORMAT: &str = "triage-verifier/2";

/// The format before per-kind heads; still read.
const VERIFIER_FORMAT_1: &str = "triage-verifier/1";

/// Characters of the answer's end that are embedded.
pub const ANSWER_TAIL_CHARS: usize = 512;

/// Tag of the answer-tail embedding.
pub const ANSWER_EMBEDDING_FEATURES: &str = "all-MiniLM-L6-v2/mean/l2/answer-tail-512";

/// The shipped verifier, trained by `triage-router train-verifier` on
/// `routing-train.jsonl`.
pub const SHIPPED_VERIFIER: &str = include_str!("../heads/verifier.json");

/// The last [`ANSWER_TAIL_CHARS`] characters of `answer` (all of a short one).
pub fn answer_tail(answer: &str) -> &str {
    let n = answer.chars().count();
    match answer
        .char_indices()
        .nth(n.saturating_sub(ANSWER_TAIL_CHARS))
    {
        Some((i, _)) if n > ANSWER_TAIL_CHARS => &answer[i..],
        _ => answer,
    }
}

/// The model input of an answer's tail, truncated like the router's text.
pub fn tail_tokens(truncator: &Truncator, answer: &str) -> Result<TokenizedText, EmbedError> {
    truncator.truncate(answer_tail(answer))
}

/// One answer to verify.
#[derive(Debug, Clone, Copy)]
pub struct AnswerToVerify<'a> {
    /// The question as the router scores it (system + last user message).
    pub question: &'a str,
    /// Tier 1's answer.
    pub answer: &'a str,
    /// Its tokens' logprobs; empty when the backend sent none.
    pub logprobs: &'a [f32],
}

/// What a verifier head is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierInput {
    /// The answer checks follow the answer-form features.
    pub checks: bool,
    /// Then the question's prompt-form features.
    pub question_form: bool,
    /// Then the token-logprob features.
    pub logprobs: bool,
    /// The answer-tail embedding comes last.
    pub embedding: bool,
}

impl VerifierInput {
    /// The tag written into a head: the parts joined by `+`.
    pub fn tag(&self) -> String {
        let mut parts = vec![ANSWER_FORM_FEATURES];
        if self.checks {
            parts.push(ANSWER_CHECK_FEATURES);
        }
        if self.question_form {
            parts.push(FORM_FEATURES);
        }
        if self.logprobs {
            parts.push(LOGPROB_FEATURES);
        }
        if self.embedding {
            parts.push(ANSWER_EMBEDDING_FEATURES);
        }
        parts.join("+")
    }

    /// The layout whose tag is `features`.
    pub fn parse(features: &str) -> Option<Self> {
        (0..16u8)
            .map(|bits| Self {
                checks: bits & 1 != 0,
                question_form: bits & 2 != 0,
                logprobs: bits & 4 != 0,
                embedding: bits & 8 != 0,
            })
            .find(|i| i.tag() == features)
    }

    /// Input width for an embedding of `embedding_dim`.
    pub fn dim(&self, embedding_dim: usize) -> usize {
        ANSWER_FORM_DIM
            + if self.checks { ANSWER_CHECK_DIM } else { 0 }
            + if self.question_form { FORM_DIM } else { 0 }
            + if self.logprobs { LOGPROB_DIM } else { 0 }
            + if self.embedding { embedding_dim } else { 0 }
    }

    /// The head's input. `embedding` is the answer tail's vector (ignored
    /// when the layout has none); `logprobs` the answer tokens' logprobs,
    /// empty when the backend sent none.
    pub fn build(
        &self,
        question: &str,
        answer: &str,
        logprobs: &[f32],
        embedding: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut x = answer_form_features(question, answer).to_vec();
        if self.checks {
            x.extend_from_slice(&answer_check_features(question, answer));
        }
        if self.question_form {
            x.extend_from_slice(&form_features(question));
        }
        if self.logprobs {
            x.extend_from_slice(&logprob_features(logprobs));
        }
        if self.embedding {
            x.extend_from_slice(embedding.unwrap_or_default());
        }
        x
    }
}

/// The verifier file: the head and the combined policy it was tuned with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifierFile {
    /// [`VERIFIER_FORMAT`].
    pub format: String,
    /// Router scores at or above this go straight to tier 2 in the
    /// combined policy (the router's own score scale).
    pub hard_threshold: f64,
    /// Verify scores at or above this escalate a tier-1 answer.
    pub verify_threshold: f64,
    /// The traffic shares the two thresholds kept on the training file,
    /// for deployments that keep shares rather than scores
    /// (`scoring.share.target`, `verify.share.target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<PolicyShares>,
    /// The head of every question whose kind has none of its own in
    /// `kind_heads`; its `features` is a [`VerifierInput`] tag.
    pub head: LogisticHead,
    /// Heads of their own for some question kinds, on `head`'s input and
    /// with the same calibration (pooled over the training answers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kind_heads: BTreeMap<QuestionKind, LogisticHead>,
}

/// What the combined policy's thresholds sent where on the file they were
/// chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyShares {
    /// Share of all requests at or above `hard_threshold` (straight to
    /// tier 2): the router's `scoring.share.target`.
    pub direct: f64,
    /// Share of the answers verified (the rest) at or above
    /// `verify_threshold`: the worker's `verify.share.target`.
    pub escalated_of_verified: f64,
}

/// The `verify` section of a service's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Verify tier 1's finished answers before releasing them (the worker;
    /// offline commands always score answers they are given).
    pub enabled: bool,
    /// A verifier file written by `train-verifier`; none: the shipped one.
    pub head_path: Option<PathBuf>,
    /// Escalate when the verify score is at or above this; none: the
    /// file's `verify_threshold`.
    pub threshold: Option<f64>,
    /// Router scores at or above this go straight to tier 2 in the
    /// combined policy; none: the file's `hard_threshold`.
    pub hard_threshold: Option<f64>,
    /// Escalate this share of recent verified answers instead of a fixed
    /// verify score (`threshold` until enough answers are seen).
    pub share: ShareConfig,
    /// The worker's MiniLM files (model.safetensors, tokenizer.json,
    /// config.json); none: `$TRIAGE_CACHE/models/all-MiniLM-L6-v2`.
    pub model_dir: Option<PathBuf>,
}

/// A loaded verifier.
#[derive(Debug, Clone)]
pub struct Verifier {
    file: VerifierFile,
    input: VerifierInput,
}

impl Verifier {
    /// The shipped verifier.
    pub fn shipped() -> Result<Self, HeadError> {
        Self::from_json(SHIPPED_VERIFIER, "<shipped verifier>")
    }

    /// The verifier `config` names, its thresholds overridden by the
    /// config's.
    pub fn from_config(config: &VerifyConfig) -> Result<Self, HeadError> {
        let mut v = match &config.head_path {
            Some(p) => Self::load(p)?,
            None => Self::shipped()?,
        };
        if let Some(t) = config.threshold {
            v.file.verify_threshold = t;
        }
        if let Some(t) = config.hard_threshold {
            v.file.hard_threshold = t;
        }
        Ok(v)
    }

    /// Escalate at or above this verify score.
    pub fn verify_threshold(&self) -> f64 {
        self.file.verify_threshold
    }

    /// Route straight to tier 2 at or above this router score.
    pub fn hard_threshold(&self) -> f64 {
        self.file.hard_threshold
    }

    /// Loads a file written by `train-verifier`.
    pub fn load(path: &Path) -> Result<Self, HeadError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| HeadError::Load {
            path: name.clone(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text, &name)
    }

    /// Parses a verifier file's contents; `name` labels errors.
    pub fn from_json(json: &str, name: &str) -> Result<Self, HeadError> {
        let file: VerifierFile = serde_json::from_str(json).map_err(|e| HeadError::Load {
            path: name.to_string(),
            reason: e.to_string(),
        })?;
        Self::new(file, name)
    }

    /// Checks the file's format and that its head's width matches its tag.
    pub fn new(file: VerifierFile, name: &str) -> Result<Self, HeadError> {
        let mismatch = |found: String, expected: String| HeadError::Mismatch {
            path: name.to_string(),
            found,
            expected,
        };
        let old_format = file.format == VERIFIER_FORMAT_1 && file.kind_heads.is_empty();
        if file.format != VERIFIER_FORMAT && !old_format {
            return Err(mismatch(file.format, VERIFIER_FORMAT.into()));
        }
        let input = VerifierInput::parse(&file.head.features).ok_or_else(|| {
            mismatch(
                file.head.features.clone(),
                format!(
                    "{ANSWER_FORM_FEATURES}[+{ANSWER_CHECK_FEATURES}][+{FORM_FEATURES}][+{LOGPROB_FEATURES}][+{ANSWER_EMBEDDING_FEATURES}]"
                ),
            )
        })?;
        let want = input.dim(crate::EMBEDDING_DIM);
        for (kind, head) in &file.kind_heads {
            if head.features != file.head.features {
                return Err(mismatch(
                    format!("{} head for {}", kind.name(), head.features),
                    file.head.features.clone(),
                ));
            }
        }
        let heads = std::iter::once(&file.head).chain(file.kind_heads.values());
        if let Some(head) = heads.into_iter().find(|h| h.weights.len() != want) {
            return Err(mismatch(
                format!("{} weights", head.weights.len()),
                format!("{want} weights for {}", file.head.features),
            ));
        }
        Ok(Self { file, input })
    }

    /// The input layout.
    pub fn input(&self) -> VerifierInput {
        self.input
    }

    /// The file (head and thresholds).
    pub fn file(&self) -> &VerifierFile {
        &self.file
    }

    /// Whether [`Verifier::score`] needs the answer-tail embedding.
    pub fn needs_embedding(&self) -> bool {
        self.input.embedding
    }

    /// Verify scores of a batch, the answer tails embedded in one model
    /// call when the head takes the embedding.
    pub fn score_batch(
        &self,
        model: &MiniLm,
        truncator: &Truncator,
        items: &[AnswerToVerify],
    ) -> Result<Vec<f64>, EmbedError> {
        let vectors = if self.needs_embedding() {
            let tokens = items
                .iter()
                .map(|a| tail_tokens(truncator, a.answer))
                .collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
            model.embed(&ids)?.into_iter().map(Some).collect()
        } else {
            vec![None; items.len()]
        };
        Ok(items
            .iter()
            .zip(&vectors)
            .map(|(a, v)| self.score(a.question, a.answer, a.logprobs, v.as_deref()))
            .collect())
    }

    /// The head that scores answers to `question` (the question's kind is
    /// read only when the file has kind heads).
    pub fn head_for(&self, question: &str) -> &LogisticHead {
        let heads = &self.file.kind_heads;
        if heads.is_empty() {
            return &self.file.head;
        }
        heads
            .get(&QuestionKind::of(question))
            .unwrap_or(&self.file.head)
    }

    /// The verify score in [0, 1], higher = more likely poor: the head's
    /// probability as a percentile of the training answers'.
    pub fn score(
        &self,
        question: &str,
        answer: &str,
        logprobs: &[f32],
        embedding: Option<&[f32]>,
    ) -> f64 {
        self.head_for(question)
            .score(&self.input.build(question, answer, logprobs, embedding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_back_and_widths_add_up() {
        for bits in 0..16u8 {
            let i = VerifierInput {
                checks: bits & 1 != 0,
                question_form: bits & 2 != 0,
                logprobs: bits & 4 != 0,
                embedding: bits & 8 != 0,
            };
            assert_eq!(VerifierInput::parse(&i.tag()), Some(i));
            let x = i.build(
                "Q?\nA. 1\nB. 2",
                "The answer is (B).",
                &[-0.1],
                Some(&[0.5; 4]),
            );
            assert_eq!(x.len(), i.dim(4));
        }
        assert_eq!(VerifierInput::parse("answer-form/0"), None);
        assert_eq!(
            VerifierInput::parse(&format!(
                "{ANSWER_EMBEDDING_FEATURES}+{ANSWER_FORM_FEATURES}"
            )),
            None,
            "order matters"
        );
    }

    #[test]
    fn the_tail_is_the_last_characters() {
        assert_eq!(answer_tail("short"), "short");
        let long = format!("{}{}", "é".repeat(100), "x".repeat(ANSWER_TAIL_CHARS));
        assert_eq!(answer_tail(&long), "x".repeat(ANSWER_TAIL_CHARS));
        let exact = "ü".repeat(ANSWER_TAIL_CHARS);
        assert_eq!(answer_tail(&exact), exact);
    }

    #[test]
    fn the_shipped_verifier_loads_and_ranks_a_missing_letter_as_poorer() {
        let v = Verifier::shipped().unwrap();
        let f = v.file();
        assert!(0.0 < f.verify_threshold && f.verify_threshold <= 1.0);
        assert!(0.0 < f.hard_threshold && f.hard_threshold <= 1.0);
        // Its training shares are ones a share threshold can keep.
        let shares = f.shares.expect("train-verifier records the shares");
        let config = crate::share_threshold::ShareConfig {
            target: Some(shares.escalated_of_verified),
            ..Default::default()
        };
        config.validate("verify.share").unwrap();
        assert!(0.0 < shares.direct && shares.direct < 1.0);
        // A file written before shares were recorded still loads.
        let mut old = serde_json::to_value(f).unwrap();
        old.as_object_mut().unwrap().remove("shares");
        let old: VerifierFile = serde_json::from_value(old).unwrap();
        assert_eq!(old.shares, None);
        let q = "What is 6 x 7?\nA. 36\nB. 42\nC. 48";
        let e = vec![0.0f32; crate::EMBEDDING_DIM];
        let stated = v.score(q, "6 x 7 = 42. The answer is (B).", &[], Some(&e));
        let missing = v.score(
            q,
            "6 x 7 is, let us see, 6 + 6 + 6 + 6 + 6 + 6 +",
            &[],
            Some(&e),
        );
        assert!(missing > stated, "missing {missing} vs stated {stated}");
    }

    #[test]
    fn each_question_kind_is_scored_by_its_own_head_where_the_file_has_one() {
        let mut file: VerifierFile = serde_json::from_str(SHIPPED_VERIFIER).unwrap();
        let kinds: Vec<QuestionKind> = file.kind_heads.keys().copied().collect();
        assert_eq!(
            kinds,
            QuestionKind::ALL,
            "the shipped file has a head per kind"
        );
        file.kind_heads.retain(|k, _| *k == QuestionKind::Open);
        let open = file.kind_heads[&QuestionKind::Open].clone();
        let v = Verifier::new(file.clone(), "x").unwrap();
        assert_eq!(v.head_for("Write a poem about the sea."), &open);
        assert_eq!(
            v.head_for("What is 6 x 7?"),
            &file.head,
            "no numeric head: the general one"
        );
        // A version-1 file cannot carry kind heads.
        file.format = VERIFIER_FORMAT_1.into();
        assert!(Verifier::new(file.clone(), "x").is_err());
        file.kind_heads.clear();
        assert!(
            Verifier::new(file, "x").is_ok(),
            "version-1 files still load"
        );
    }

    #[test]
    fn a_kind_head_on_another_input_is_refused() {
        let mut file: VerifierFile = serde_json::from_str(SHIPPED_VERIFIER).unwrap();
        let open = file.kind_heads.get_mut(&QuestionKind::Open).unwrap();
        open.features = "answer-form/1".into();
        let err = Verifier::new(file.clone(), "x").unwrap_err().to_string();
        assert!(err.contains("open head"), "{err}");
        let open = file.kind_heads.get_mut(&QuestionKind::Open).unwrap();
        open.features = file.head.features.clone();
        open.weights.pop();
        let err = Verifier::new(file, "x").unwrap_err().to_string();
        assert!(err.contains("weights"), "{err}");
    }

    #[test]
    fn a_head_of_the_wrong_width_or_format_is_refused() {
        let mut file: VerifierFile = serde_json::from_str(SHIPPED_VERIFIER).unwrap();
        file.head.weights.pop();
        let err = Verifier::new(file.clone(), "x").unwrap_err().to_string();
        assert!(err.contains("weights"), "{err}");
        file.format = "other/1".into();
        assert!(Verifier::new(file, "x").is_err());
    }
}
