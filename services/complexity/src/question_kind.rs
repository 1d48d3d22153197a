//! The kind of question an answer answers: multiple choice, a question
//! with numbers in it (a word problem, a calculation), or an open request.
//!
//! The verifier keeps a head per kind because what marks a poor answer
//! differs between them: on multiple choice a missing or unbacked letter,
//! on a word problem a wrong sum, on an open request a short reply
//! (AlpacaEval's judge prefers long answers: the answer's length alone
//! ranks poor answers there at ROC AUC 0.75, while one head fitted mostly
//! on MMLU-Pro's chains of thought, where long means struggling, reached
//! 0.55). Read off the question's prompt form ([`crate::prompt_form`]).

use serde::{Deserialize, Serialize};

use crate::prompt_form::{form_features, FORM_NAMES};

/// A question's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionKind {
    /// Two or more option lines (`A. …`).
    MultipleChoice,
    /// No options, and a number in the question.
    Numeric,
    /// Neither: write, explain, advise …
    Open,
}

impl QuestionKind {
    /// Every kind, in order.
    pub const ALL: [QuestionKind; 3] = [Self::MultipleChoice, Self::Numeric, Self::Open];

    /// The kind of `question` (the text the router scores).
    pub fn of(question: &str) -> Self {
        let f = form_features(question);
        let at = |name: &str| {
            f[FORM_NAMES
                .iter()
                .position(|n| *n == name)
                .expect("a form feature")]
        };
        if at("multiple_choice") > 0.0 {
            Self::MultipleChoice
        } else if at("ln_numbers") > 0.0 {
            Self::Numeric
        } else {
            Self::Open
        }
    }

    /// The name used in files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::MultipleChoice => "multiple_choice",
            Self::Numeric => "numeric",
            Self::Open => "open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_numbers_or_neither() {
        let mc = "Which is prime? It has 2 divisors.\nA. 4\nB. 7";
        assert_eq!(QuestionKind::of(mc), QuestionKind::MultipleChoice);
        let word = "Tom has 12 apples and eats 3. How many are left?";
        assert_eq!(QuestionKind::of(word), QuestionKind::Numeric);
        assert_eq!(
            QuestionKind::of("Write a poem about the sea."),
            QuestionKind::Open
        );
        // One option-like line is not multiple choice.
        assert_eq!(QuestionKind::of("A. note to self"), QuestionKind::Open);
        let names: Vec<&str> = QuestionKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["multiple_choice", "numeric", "open"]);
        assert_eq!(
            serde_json::to_string(&QuestionKind::Numeric).unwrap(),
            "\"numeric\""
        );
    }
}
