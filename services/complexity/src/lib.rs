//! Triage's complexity scoring: decides how likely a request needs the large
//! model (tier 2).
//!
//! The pipeline, each step its own module:
//! 1. [`prompt_text`] picks the text that matters (last user message, then
//!    the system message) and [`truncation`] keeps its first N model tokens;
//! 2. [`rules`] force tier 2 on fenced code, code-like syntax, math notation
//!    and configured keywords;
//! 3. [`embedding`] runs all-MiniLM-L6-v2 (mean pooling, L2
//!    normalisation) on the unpadded BERT [`encoder`] ([`attention`] and
//!    the [`kernels`] it is made of), [`prompt_form`] measures the prompt's form,
//!    [`head_input`] joins the two and [`head`] turns that into
//!    P(needs tier 2);
//! 4. [`blend`] mixes that with an optional LLM self-rating and compares
//!    with the threshold ([`share_threshold`] keeps it at a share of
//!    recent traffic when configured);
//! 5. [`calibration`] measures a score against labelled data (ROC AUC,
//!    APGR, CPT, threshold sweep) and picks thresholds;
//! 6. [`static_embedding`] is a cheap first stage (MiniLM token vectors
//!    averaged without the transformer); [`cache`] remembers scores of
//!    repeated texts; [`vector_file`] stores computed vectors for
//!    training and analysis;
//! 7. after generation, [`verifier`] estimates P(tier 1's answer is poor)
//!    from [`answer_form`], [`answer_check`] (its sums, checked by
//!    [`answer_arithmetic`], the option it chose, its final number), the
//!    question's [`prompt_form`], [`answer_confidence`] (token logprobs)
//!    and the MiniLM embedding of the answer's end, and [`cascade`] measures
//!    pre-hoc, verify-only and combined policies at honest cost.
//!
//! Everything here is synchronous and free of network I/O: the router
//! service wires it to NATS, and the offline commands to files.

pub mod answer_arithmetic;
pub mod answer_check;
pub mod answer_confidence;
pub mod answer_form;
pub(crate) mod attention;
pub mod band_share;
pub mod blend;
pub mod cache;
pub mod calibration;
pub mod cascade;
pub mod dataset;
pub mod embedding;
pub mod encoder;
pub mod head;
pub mod head_input;
pub(crate) mod int8_dense;
pub(crate) mod kernels;
pub mod model_files;
pub mod prompt_form;
pub mod prompt_text;
pub mod question_kind;
pub mod rules;
pub mod scorer;
pub mod share_threshold;
pub mod static_embedding;
pub mod truncation;
pub mod vector_file;
pub mod verifier;

pub use blend::{Blend, BlendWeights, Decision};

/// Whether the int8 encoder (`scoring.precision = "int8"`) runs a SIMD
/// kernel on this CPU (AVX-512 VNNI, else AVX2); without either, a
/// portable scalar loop with the same sums, several times slower.
pub fn int8_has_fast_kernel() -> bool {
    int8_dense::has_vnni() || int8_dense::has_avx2()
}
pub use cache::ScoreCache;
pub use embedding::{EmbedError, MiniLm, Precision, PrecisionSetting, EMBEDDING_DIM};
pub use head::LogisticHead;
pub use model_files::ModelFiles;
pub use rules::{RuleConfig, RuleMatch, RuleSet};
pub use truncation::{TokenizedText, Truncator};
