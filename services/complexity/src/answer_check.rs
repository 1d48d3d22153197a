//! Checks of what an answer says, beyond its form: are its own sums right
//! ([`crate::answer_arithmetic`]), which option did it choose (where in
//! the list, the longest or the shortest — small models lean on both), and
//! is its final number one a word problem's answer can be (a whole,
//! non-negative number).
//!
//! Beside the form features they raise the verifier's ROC AUC on poor
//! answers from 0.693 to 0.719 in 5-fold CV on `routing-train.jsonl` and
//! from 0.654 to 0.685 on dev (`services/router/analysis/verifier_signals.py`),
//! most of it on GSM8K-like word problems. Pure and microseconds a call.

use crate::answer_arithmetic::check_arithmetic;
use crate::answer_form::{final_number, options, stated_letter};

/// Feature tag of the answer checks, part of a verifier head's `features`.
pub const ANSWER_CHECK_FEATURES: &str = "answer-check/1";

/// Names of the features, in order (documented in the head file).
pub const ANSWER_CHECK_NAMES: [&str; ANSWER_CHECK_DIM] = [
    "ln_equations_checked",
    "ln_equations_wrong",
    "chosen_option_position",
    "chosen_option_longest",
    "chosen_option_shortest",
    "final_number_not_whole",
    "final_number_negative",
    "ln_final_number_magnitude",
];

/// Number of answer-check features.
pub const ANSWER_CHECK_DIM: usize = 8;

/// The answer checks of `answer` to `question`, in the order of
/// [`ANSWER_CHECK_NAMES`].
pub fn answer_check_features(question: &str, answer: &str) -> [f32; ANSWER_CHECK_DIM] {
    let sums = check_arithmetic(answer);
    let opts = options(question);
    let chosen = stated_letter(answer).and_then(|l| opts.iter().position(|(k, _)| *k == l));
    let lengths: Vec<usize> = opts.iter().map(|(_, body)| body.chars().count()).collect();
    let (position, longest, shortest) = match chosen {
        Some(i) => (
            i as f32 / opts.len() as f32,
            lengths.iter().all(|l| *l <= lengths[i]),
            lengths.iter().all(|l| *l >= lengths[i]),
        ),
        None => (0.0, false, false),
    };
    let number = final_number(answer);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    [
        (sums.checked as f32).ln_1p(),
        (sums.wrong as f32).ln_1p(),
        position,
        flag(longest),
        flag(shortest),
        flag(number.is_some_and(|x| x.fract() != 0.0)),
        flag(number.is_some_and(|x| x < 0.0)),
        number.map_or(0.0, |x| x.abs().ln_1p() as f32),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(f: &[f32; ANSWER_CHECK_DIM], name: &str) -> f32 {
        f[ANSWER_CHECK_NAMES
            .iter()
            .position(|n| *n == name)
            .expect("known name")]
    }

    const QUESTION: &str = "What is 6 x 7?\nA. 36\nB. 42\nC. forty-eight";

    #[test]
    fn the_chosen_option_is_placed_and_measured() {
        let b = answer_check_features(QUESTION, "6 * 7 = 42. The answer is (B).");
        assert_eq!(get(&b, "ln_equations_checked"), 2f32.ln());
        assert_eq!(get(&b, "ln_equations_wrong"), 0.0);
        assert!((get(&b, "chosen_option_position") - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(get(&b, "chosen_option_longest"), 0.0);
        assert_eq!(get(&b, "chosen_option_shortest"), 1.0);
        let c = answer_check_features(QUESTION, "6 * 7 = 48, the answer is (C).");
        assert_eq!(get(&c, "ln_equations_wrong"), 2f32.ln());
        assert_eq!(get(&c, "chosen_option_longest"), 1.0);
        let none = answer_check_features(QUESTION, "Hard to say.");
        assert_eq!(get(&none, "chosen_option_position"), 0.0);
        assert_eq!(get(&none, "chosen_option_longest"), 0.0);
    }

    #[test]
    fn a_final_number_a_word_problem_cannot_have_is_seen() {
        let whole = answer_check_features("How many?", "3 + 4 = 7\n#### 7");
        assert_eq!(get(&whole, "final_number_not_whole"), 0.0);
        assert_eq!(get(&whole, "ln_final_number_magnitude"), 8f32.ln());
        let half = answer_check_features("How many?", "#### 3.5");
        assert_eq!(get(&half, "final_number_not_whole"), 1.0);
        let negative = answer_check_features("How many?", "The answer is -2");
        assert_eq!(get(&negative, "final_number_negative"), 1.0);
        let empty = answer_check_features("", "");
        assert!(empty.iter().all(|v| *v == 0.0));
    }
}
