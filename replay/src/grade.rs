//! Grading an answer against a row's gold `answer`, by the rules behind the
//! shipped data's labels (data/README.md): multiple choice — the stated
//! letter equals the gold letter; a number — the last number equals it;
//! otherwise the answer must match `answer_regex` when the row has one, or
//! contain the gold text (case and spacing ignored). Rows without a gold
//! answer are graded by a judge model ([`judge_prompt`], [`judge_score`]).
//! Pure.

use std::sync::LazyLock;

use regex::Regex;
use triage_complexity::answer_form::{last_number, stated_letter};

/// The judge's score at or above which an answer is good (the rule of the
/// shipped data's judged sources).
pub const GOOD_SCORE: f64 = 7.0;

/// How an answer was graded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The stated option letter against the gold letter.
    Letter,
    /// The last number against the gold number.
    Number,
    /// `answer_regex` or the gold text.
    Text,
}

impl Rule {
    /// The rule a gold answer calls for.
    pub fn for_gold(gold: &str, has_regex: bool) -> Self {
        let g = gold.trim();
        if has_regex {
            Rule::Text
        } else if g.len() == 1 && g.chars().all(|c| ('A'..='J').contains(&c)) {
            Rule::Letter
        } else if g.replace(',', "").parse::<f64>().is_ok() {
            Rule::Number
        } else {
            Rule::Text
        }
    }

    /// In words, for `label_basis`.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Letter => "the stated option letter equals the gold letter",
            Rule::Number => "the last number equals the gold number",
            Rule::Text => "the answer matches the gold answer",
        }
    }
}

/// What grading found.
#[derive(Debug, Clone, PartialEq)]
pub struct Graded {
    /// Whether the answer is right.
    pub ok: bool,
    /// What was read from it (letter or number), when the rule reads one.
    pub pred: Option<String>,
}

fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Grades `answer` against `gold` (and the row's `answer_regex`, already
/// compiled, if any).
pub fn grade(rule: Rule, gold: &str, regex: Option<&Regex>, answer: &str) -> Graded {
    match rule {
        Rule::Letter => {
            let pred = stated_letter(answer);
            Graded {
                ok: pred.is_some_and(|p| p.to_string() == gold.trim().to_uppercase()),
                pred: pred.map(String::from),
            }
        }
        Rule::Number => {
            let pred = last_number(answer);
            let want = last_number(gold);
            Graded {
                ok: pred.is_some() && pred == want,
                pred,
            }
        }
        Rule::Text => Graded {
            ok: match regex {
                Some(r) => r.is_match(answer),
                None => normalise(answer).contains(&normalise(gold)),
            },
            pred: None,
        },
    }
}

/// The single-answer grading prompt sent to the judge (MT-Bench's rubric:
/// a 1–10 rating in `[[ ]]`), at temperature 0.
pub fn judge_prompt(question: &str, answer: &str) -> String {
    format!(
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response \
         provided by an AI assistant to the user question displayed below. Your evaluation should \
         consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level \
         of detail of the response. Begin your evaluation by providing a short explanation. Be as \
         objective as possible. After providing your explanation, you must rate the response on a \
         scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: \
         \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n\
         [The End of Assistant's Answer]"
    )
}

static RATING: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[\[(\d+(?:\.\d+)?)\]\]").expect("built-in pattern"));

/// The judge's rating (1–10) from its verdict, `None` when it gave none.
pub fn judge_score(verdict: &str) -> Option<f64> {
    RATING
        .captures_iter(verdict)
        .last()
        .and_then(|c| c[1].parse::<f64>().ok())
        .filter(|s| (0.0..=10.0).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gold_answer_picks_its_rule() {
        assert_eq!(Rule::for_gold("C", false), Rule::Letter);
        assert_eq!(Rule::for_gold("-3", false), Rule::Number);
        assert_eq!(Rule::for_gold("1,200", false), Rule::Number);
        assert_eq!(Rule::for_gold("Paris", false), Rule::Text);
        assert_eq!(Rule::for_gold("C", true), Rule::Text);
    }

    #[test]
    fn letters_numbers_and_text_are_graded_as_the_data_was() {
        let g = grade(Rule::Letter, "C", None, "Thinking... the answer is (C).");
        assert_eq!(
            g,
            Graded {
                ok: true,
                pred: Some("C".into())
            }
        );
        assert!(
            !grade(Rule::Letter, "C", None, "It must be C.").ok,
            "no stated letter is wrong"
        );
        assert!(
            grade(
                Rule::Number,
                "18",
                None,
                "She sells 16 - 3 - 4 = 9 eggs, 9 * 2 = $18."
            )
            .ok
        );
        assert!(!grade(Rule::Number, "18", None, "18 eggs, so 36").ok);
        assert!(grade(Rule::Number, "1200", None, "in total 1,200.00").ok);
        assert!(grade(Rule::Text, "Paris", None, "The capital is  paris.").ok);
        let r = Regex::new(r"(?i)\bmercury\b").unwrap();
        assert!(grade(Rule::Text, "x", Some(&r), "Mercury is closest.").ok);
    }

    #[test]
    fn the_judges_rating_is_read_from_its_last_brackets() {
        assert_eq!(judge_score("Good. Rating: [[8]]"), Some(8.0));
        assert_eq!(judge_score("[[3]] then, on reflection, [[6.5]]"), Some(6.5));
        assert_eq!(judge_score("Rating: 8"), None);
        assert_eq!(judge_score("[[42]]"), None);
        assert!(judge_prompt("Q?", "A.").contains("[[rating]]"));
    }
}
