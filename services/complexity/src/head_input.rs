//! What a head is fed, read from its `features` tag: a sentence vector
//! (MiniLM's or the static first stage's), optionally followed by the
//! prompt-form features. One place builds the vector, so training, offline
//! scoring and the service always agree on it.

use crate::prompt_form::{form_features, FORM_DIM, FORM_FEATURES};

/// Joins a vector's tag and the form features' tag.
const JOIN: char = '+';

/// A head's input layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadInput {
    /// The sentence vector's tag, e.g. [`crate::scorer::MINILM_FEATURES`].
    pub vector: &'static str,
    /// Whether the form features follow the vector.
    pub form: bool,
}

impl HeadInput {
    /// The layout whose tag is `features`, if its vector part is `vector`.
    pub fn parse(features: &str, vector: &'static str) -> Option<Self> {
        if features == vector {
            return Some(Self {
                vector,
                form: false,
            });
        }
        let (v, f) = features.split_once(JOIN)?;
        (v == vector && f == FORM_FEATURES).then_some(Self { vector, form: true })
    }

    /// The tag written into a head file.
    pub fn tag(&self) -> String {
        if self.form {
            format!("{}{JOIN}{FORM_FEATURES}", self.vector)
        } else {
            self.vector.to_string()
        }
    }

    /// Input width for a vector of `vector_dim`.
    pub fn dim(&self, vector_dim: usize) -> usize {
        vector_dim + if self.form { FORM_DIM } else { 0 }
    }

    /// The head's input: the vector, then the form features of `text` (the
    /// truncated text that was embedded).
    pub fn build(&self, vector: &[f32], text: &str) -> Vec<f32> {
        let mut x = Vec::with_capacity(self.dim(vector.len()));
        x.extend_from_slice(vector);
        if self.form {
            x.extend_from_slice(&form_features(text));
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "minilm/mean/l2";

    #[test]
    fn tags_parse_back() {
        for form in [false, true] {
            let input = HeadInput { vector: V, form };
            assert_eq!(HeadInput::parse(&input.tag(), V), Some(input));
        }
        assert_eq!(HeadInput::parse("minilm/mean/l2+prompt-form/0", V), None);
        assert_eq!(HeadInput::parse("static+prompt-form/1", V), None);
        assert_eq!(HeadInput::parse("other", V), None);
    }

    #[test]
    fn builds_the_vector_then_the_form() {
        let v = [0.5f32, -0.5];
        let plain = HeadInput {
            vector: V,
            form: false,
        };
        assert_eq!(plain.build(&v, "A. x\nB. y"), v.to_vec());
        let with_form = HeadInput {
            vector: V,
            form: true,
        };
        let x = with_form.build(&v, "Which?\nA. x\nB. y");
        assert_eq!(x.len(), with_form.dim(2));
        assert_eq!(&x[..2], &v);
        assert_eq!(&x[2..], &form_features("Which?\nA. x\nB. y"));
    }
}
