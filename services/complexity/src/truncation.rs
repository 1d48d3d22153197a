//! Keeps the first N model tokens of a text, counted with the model's own
//! tokenizer.
//!
//! `max_tokens` counts the model input, `[CLS]` and `[SEP]` included, like
//! sentence-transformers' `max_seq_length`; MiniLM takes at most 512.
//! Long prompts are not tokenised whole: a window of the text is cut at a
//! whitespace boundary (BERT's pre-tokenizer never joins across whitespace,
//! so the tokens before the cut are exactly those of the whole text) and
//! widened until it holds enough tokens.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::embedding::EmbedError;

/// A token's byte span in the text.
type Offsets = (usize, usize);

/// Bytes of text per token to start the window with; most English
/// wordpieces cover 3–5 bytes, so this window almost always suffices.
const WINDOW_BYTES_PER_TOKEN: usize = 8;

/// A text cut to the model's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedText {
    /// Model input ids: `[CLS]`, the kept tokens, `[SEP]`.
    pub ids: Vec<u32>,
    /// The part of the original text the kept tokens cover; rules, the
    /// score cache and the self-rating see this, not the whole prompt.
    pub text: String,
    /// Whether tokens were dropped.
    pub truncated: bool,
}

/// Tokenises and truncates.
pub struct Truncator {
    tokenizer: Tokenizer,
    max_tokens: usize,
    cls: u32,
    sep: u32,
}

impl Truncator {
    /// Loads `tokenizer.json`, disabling its own truncation and padding.
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<Self, EmbedError> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer(tokenizer, max_tokens)
    }

    /// Wraps a BERT-style tokenizer (one with `[CLS]` and `[SEP]`).
    pub fn from_tokenizer(mut tokenizer: Tokenizer, max_tokens: usize) -> Result<Self, EmbedError> {
        if max_tokens < 3 {
            return Err(EmbedError::Tokenizer(format!(
                "max_tokens must be at least 3 ([CLS], one token, [SEP]), got {max_tokens}"
            )));
        }
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| EmbedError::Tokenizer(format!("the tokenizer has no {t} token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        Ok(Self {
            tokenizer,
            max_tokens,
            cls,
            sep,
        })
    }

    /// The model input budget, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Counts every token of `text` (no special tokens); for tests and
    /// reports, not the hot path.
    pub fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        Ok(self.encode_plain(text)?.0.len())
    }

    fn encode_plain(&self, text: &str) -> Result<(Vec<u32>, Vec<Offsets>), EmbedError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The first `max_tokens` model tokens of `text`, and the text they cover.
    pub fn truncate(&self, text: &str) -> Result<TokenizedText, EmbedError> {
        let keep = self.max_tokens - 2;
        let mut budget = keep * WINDOW_BYTES_PER_TOKEN;
        loop {
            let (window, whole) = whitespace_window(text, budget);
            let (ids, offsets) = self.encode_plain(window)?;
            if whole || ids.len() >= keep {
                // A window shorter than the text but already holding `keep`
                // tokens means the text has more than `keep` tokens unless
                // the window ends exactly there and only whitespace follows.
                let truncated =
                    ids.len() > keep || (!whole && !text[window.len()..].trim().is_empty());
                let n = ids.len().min(keep);
                let end = if n == 0 { 0 } else { offsets[n - 1].1 };
                let mut model_ids = Vec::with_capacity(n + 2);
                model_ids.push(self.cls);
                model_ids.extend_from_slice(&ids[..n]);
                model_ids.push(self.sep);
                let kept_text = if truncated { &text[..end] } else { text };
                return Ok(TokenizedText {
                    ids: model_ids,
                    text: kept_text.to_string(),
                    truncated,
                });
            }
            budget *= 2;
        }
    }
}

/// The longest prefix of `text` of at most `budget` bytes that ends at a
/// whitespace character (or the whole text), and whether it is the whole
/// text.
fn whitespace_window(text: &str, budget: usize) -> (&str, bool) {
    if text.len() <= budget {
        return (text, true);
    }
    let mut cut = budget;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    match text[..cut].rfind(char::is_whitespace) {
        Some(i) if i > 0 => (&text[..i], false),
        // No whitespace at all in the window: one giant word. Widen until
        // there is a boundary or the window is the whole text.
        _ => match text[cut..].find(char::is_whitespace) {
            Some(i) => (&text[..cut + i], false),
            None => (text, true),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny BERT-style tokenizer: the same normaliser, pre-tokenizer and
    /// WordPiece model as MiniLM's, with a handful of words.
    pub(crate) fn tiny_tokenizer() -> Tokenizer {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "un", "##believ",
            "##able", ".", ",", "a",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                "vocab": vocab}
        });
        json.to_string().parse().unwrap()
    }

    #[test]
    fn counts_model_tokens_not_characters() {
        let t = Truncator::from_tokenizer(tiny_tokenizer(), 512).unwrap();
        // "unbelievable" is 12 characters but 3 wordpieces.
        assert_eq!(t.count_tokens("Unbelievable.").unwrap(), 4);
        let out = t.truncate("The cat sat.").unwrap();
        assert_eq!(out.ids, vec![2, 4, 5, 6, 12, 3]);
        assert_eq!(out.text, "The cat sat.");
        assert!(!out.truncated);
    }

    #[test]
    fn keeps_only_the_first_tokens() {
        // Budget 5 = [CLS] + 3 tokens + [SEP].
        let t = Truncator::from_tokenizer(tiny_tokenizer(), 5).unwrap();
        let out = t.truncate("unbelievable cat on the mat").unwrap();
        assert_eq!(out.ids, vec![2, 9, 10, 11, 3]);
        assert_eq!(out.text, "unbelievable");
        assert!(out.truncated);
    }

    #[test]
    fn window_cut_gives_the_same_tokens_as_the_whole_text() {
        // Long enough that the first window (8 bytes per token) cuts it.
        let t = Truncator::from_tokenizer(tiny_tokenizer(), 6).unwrap();
        let long = "the cat sat on the mat, ".repeat(50);
        let out = t.truncate(&long).unwrap();
        let all = tiny_tokenizer().encode(long.as_str(), false).unwrap();
        assert_eq!(&out.ids[1..5], &all.get_ids()[..4]);
        assert_eq!(out.text, "the cat sat on");
        assert!(out.truncated);
        // Exactly at the budget: nothing dropped.
        let exact = t.truncate("the cat sat on").unwrap();
        assert!(!exact.truncated);
        // Whitespace after the last kept token does not count as dropped.
        let padded = format!("the cat sat on{}", " ".repeat(200));
        assert!(!t.truncate(&padded).unwrap().truncated);
    }

    #[test]
    fn a_window_without_whitespace_grows() {
        let t = Truncator::from_tokenizer(tiny_tokenizer(), 4).unwrap();
        let text = format!("{} cat", ".".repeat(100));
        let out = t.truncate(&text).unwrap();
        assert_eq!(out.ids, vec![2, 12, 12, 3]);
        assert_eq!(out.text, "..");
    }

    #[test]
    fn tiny_budget_is_rejected() {
        assert!(Truncator::from_tokenizer(tiny_tokenizer(), 2).is_err());
    }
}
