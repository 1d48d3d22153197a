//! Features of an answer's form against its question, for the verifier:
//! did tier 1 state a final answer (an option letter, a number), does that
//! letter exist among the options and is it backed by the reasoning, did
//! it hedge, refuse, repeat itself or stop mid-sentence, and how long is
//! it against the question.
//!
//! On MMLU-Pro a response that states no letter is graded wrong, and a
//! looping or cut-off chain of thought rarely ends well: these are the
//! cheapest signals that an answer is poor. Pure and microseconds a call.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

/// Feature tag of the answer-form features, part of a verifier head's
/// `features`.
pub const ANSWER_FORM_FEATURES: &str = "answer-form/1";

/// Names of the features, in order (documented in the head file).
pub const ANSWER_FORM_NAMES: [&str; ANSWER_FORM_DIM] = [
    "multiple_choice",
    "states_letter",
    "multiple_choice_without_letter",
    "letter_not_an_option",
    "letters_disagree",
    "chosen_option_number_in_reasoning",
    "states_final_number",
    "states_final_answer",
    "ln_hedges",
    "ln_self_corrections",
    "refusal",
    "ends_mid_sentence",
    "repeated_line_share",
    "repeated_8gram_share",
    "ln_answer_chars",
    "ln_question_chars",
    "ln_answer_over_question",
    "ln_answer_numbers",
];

/// Number of answer-form features.
pub const ANSWER_FORM_DIM: usize = 18;

/// "the answer is (X)" / "Answer: X", as MMLU-Pro grades it.
static LETTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:answer is:?\s*\(?|answer:\s*\(?)([A-J])\b").expect("built-in pattern")
});
/// GSM8K's `#### N` or "the answer is N".
static FINAL_NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:####|answer is:?)\s*\$?\s*(-?[\d,]*\.?\d+)").expect("built-in pattern")
});
static FINAL_PHRASE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(the answer is|answer:|in conclusion|therefore|thus|so the|####)")
        .expect("built-in pattern")
});
static HEDGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(might|may|perhaps|possibly|probably|likely|not sure|unclear|i think|i believe|approximately|roughly|it depends|assume|assuming)\b",
    )
    .expect("built-in pattern")
});
static SELF_CORRECTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(however|but wait|wait|actually|mistake|re-?evaluate|recalculate|let me re|on second thought|incorrect)\b")
        .expect("built-in pattern")
});
static REFUSAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(i can(no|')t (help|assist|provide|answer)|i'm sorry|i am sorry|i apologi[sz]e|as an ai\b|i'm not able to|i am not able to|i must respectfully|not appropriate)",
    )
    .expect("built-in pattern")
});
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"-?\d[\d,]*(?:\.\d+)?").expect("built-in pattern"));

/// The option letter the answer states last ("the answer is (X)",
/// "Answer: X"), upper-cased: MMLU-Pro's grading rule.
pub fn stated_letter(answer: &str) -> Option<char> {
    LETTER
        .captures_iter(answer)
        .filter_map(|c| c[1].chars().next())
        .last()
        .map(|c| c.to_ascii_uppercase())
}

/// The last number in the answer without thousands separators (and
/// without a trailing `.0…`): GSM8K's grading rule as RouteLLM applies it.
pub fn last_number(answer: &str) -> Option<String> {
    let n = plain_number(NUMBER.find_iter(answer).last()?.as_str());
    Some(match n.split_once('.') {
        Some((whole, frac)) if frac.chars().all(|c| c == '0') => whole.to_string(),
        _ => n,
    })
}

/// The final number the answer states (`#### N`, "the answer is N"), if
/// any: the last one.
pub fn final_number(answer: &str) -> Option<f64> {
    FINAL_NUMBER
        .captures_iter(answer)
        .last()
        .and_then(|c| plain_number(&c[1]).parse().ok())
}

/// Option lines as the sources render them (`A. text` … `J. text`):
/// letter and body.
pub(crate) fn options(question: &str) -> Vec<(char, &str)> {
    question
        .lines()
        .filter_map(|line| {
            let b = line.as_bytes();
            (b.len() >= 3 && (b'A'..=b'J').contains(&b[0]) && b[1] == b'.' && b[2] == b' ')
                .then(|| (char::from(b[0]), &line[3..]))
        })
        .collect()
}

/// A number written without thousands separators, for comparison.
fn plain_number(s: &str) -> String {
    s.replace(',', "")
}

/// Whether the answer stops where no sentence, list, formula or code
/// block ends: the mark of a response cut by its token limit.
fn ends_mid_sentence(answer: &str) -> bool {
    let t = answer.trim_end();
    match t.chars().last() {
        None => false,
        Some(c) => {
            !(matches!(
                c,
                '.' | '!' | '?' | ')' | ']' | '"' | '\'' | '`' | '*' | '}' | ':'
            ) || c.is_ascii_digit())
        }
    }
}

/// Share of non-empty lines that repeat an earlier line (loops).
fn repeated_line_share(answer: &str) -> f32 {
    let lines: Vec<&str> = answer
        .lines()
        .map(str::trim)
        .filter(|l| l.len() > 3)
        .collect();
    if lines.is_empty() {
        return 0.0;
    }
    let mut seen = HashSet::new();
    let repeats = lines.iter().filter(|l| !seen.insert(**l)).count();
    repeats as f32 / lines.len() as f32
}

/// Share of word 8-grams that occurred earlier in the answer.
fn repeated_ngram_share(answer: &str) -> f32 {
    let words: Vec<&str> = answer.split_whitespace().collect();
    if words.len() < 9 {
        return 0.0;
    }
    let mut seen = HashSet::new();
    let grams = words.windows(8);
    let total = grams.len();
    let repeats = grams.filter(|g| !seen.insert(*g)).count();
    repeats as f32 / total as f32
}

fn ln1p(v: usize) -> f32 {
    (v as f32).ln_1p()
}

/// The answer-form features of `answer` to `question`, in the order of
/// [`ANSWER_FORM_NAMES`].
pub fn answer_form_features(question: &str, answer: &str) -> [f32; ANSWER_FORM_DIM] {
    let opts = options(question);
    let multiple_choice = opts.len() >= 2;
    let letters: Vec<char> = LETTER
        .captures_iter(answer)
        .filter_map(|c| c[1].chars().next())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let last_letter = letters.last().copied();
    let distinct: HashSet<char> = letters.iter().copied().collect();
    let chosen = last_letter.and_then(|l| opts.iter().find(|(k, _)| *k == l));
    // The chosen option's first number occurring in the reasoning (before
    // the final statement) says the computation led to it.
    let backed = chosen.is_some_and(|(_, body)| {
        let Some(n) = NUMBER.find(body) else {
            return false;
        };
        let wanted = plain_number(n.as_str());
        let reasoning = LETTER
            .find_iter(answer)
            .last()
            .map_or(answer, |m| &answer[..m.start()]);
        NUMBER
            .find_iter(reasoning)
            .any(|m| plain_number(m.as_str()) == wanted)
    });
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let answer_chars = answer.chars().count();
    let question_chars = question.chars().count();
    [
        flag(multiple_choice),
        flag(last_letter.is_some()),
        flag(multiple_choice && last_letter.is_none()),
        flag(multiple_choice && last_letter.is_some() && chosen.is_none()),
        flag(distinct.len() > 1),
        flag(backed),
        flag(FINAL_NUMBER.is_match(answer)),
        flag(FINAL_PHRASE.is_match(answer)),
        ln1p(HEDGE.find_iter(answer).count()),
        ln1p(SELF_CORRECTION.find_iter(answer).count()),
        flag(REFUSAL.is_match(answer)),
        flag(ends_mid_sentence(answer)),
        repeated_line_share(answer),
        repeated_ngram_share(answer),
        ln1p(answer_chars),
        ln1p(question_chars),
        ln1p(answer_chars) - ln1p(question_chars),
        ln1p(NUMBER.find_iter(answer).count()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stated_letter_and_the_last_number_are_what_graders_read() {
        assert_eq!(
            stated_letter("I think (A)... so the answer is (c)."),
            Some('C')
        );
        assert_eq!(stated_letter("Answer: B"), Some('B'));
        assert_eq!(stated_letter("It is B."), None);
        assert_eq!(
            last_number("3 apples, then 1,200.00 in total"),
            Some("1200".into())
        );
        assert_eq!(last_number("-3.5 degrees"), Some("-3.5".into()));
        assert_eq!(last_number("none"), None);
    }

    fn get(f: &[f32; ANSWER_FORM_DIM], name: &str) -> f32 {
        f[ANSWER_FORM_NAMES
            .iter()
            .position(|n| *n == name)
            .expect("known name")]
    }

    const QUESTION: &str = "What is 6 x 7?\nA. 36\nB. 42\nC. 48";

    #[test]
    fn a_stated_backed_letter_reads_as_confident() {
        let f = answer_form_features(QUESTION, "6 times 7 is 42. The answer is (B).");
        assert_eq!(get(&f, "multiple_choice"), 1.0);
        assert_eq!(get(&f, "states_letter"), 1.0);
        assert_eq!(get(&f, "multiple_choice_without_letter"), 0.0);
        assert_eq!(get(&f, "letter_not_an_option"), 0.0);
        assert_eq!(get(&f, "letters_disagree"), 0.0);
        assert_eq!(get(&f, "chosen_option_number_in_reasoning"), 1.0);
        assert_eq!(get(&f, "states_final_answer"), 1.0);
        assert_eq!(get(&f, "ends_mid_sentence"), 0.0);
    }

    #[test]
    fn a_missing_unbacked_or_impossible_letter_is_seen() {
        let none = answer_form_features(QUESTION, "We multiply 6 by 7 and get");
        assert_eq!(get(&none, "states_letter"), 0.0);
        assert_eq!(get(&none, "multiple_choice_without_letter"), 1.0);
        assert_eq!(get(&none, "ends_mid_sentence"), 1.0);
        let unbacked = answer_form_features(QUESTION, "It is 40. The answer is (C).");
        assert_eq!(get(&unbacked, "chosen_option_number_in_reasoning"), 0.0);
        let impossible = answer_form_features(QUESTION, "Answer: J");
        assert_eq!(get(&impossible, "letter_not_an_option"), 1.0);
        let flip = answer_form_features(
            QUESTION,
            "The answer is (A). However, wait: 6 x 7 = 42, so the answer is (B).",
        );
        assert_eq!(get(&flip, "letters_disagree"), 1.0);
        assert_eq!(get(&flip, "ln_self_corrections"), 3f32.ln());
    }

    #[test]
    fn numbers_hedges_refusals_and_loops() {
        let gsm = answer_form_features(
            "Tom has 3 apples and buys 4. How many?",
            "3 + 4 = 7\n#### 7",
        );
        assert_eq!(get(&gsm, "multiple_choice"), 0.0);
        assert_eq!(get(&gsm, "states_final_number"), 1.0);
        assert_eq!(get(&gsm, "ln_answer_numbers"), 5f32.ln());
        let hedged =
            answer_form_features("Why?", "It might be the heat; I think it is probably that.");
        assert_eq!(get(&hedged, "ln_hedges"), 4f32.ln());
        let refused = answer_form_features("Do it.", "I'm sorry, but I cannot help with that.");
        assert_eq!(get(&refused, "refusal"), 1.0);
        let looping = "We simplify this to get 2 = 2.\n".repeat(4);
        let l = answer_form_features("Simplify.", &looping);
        assert_eq!(get(&l, "repeated_line_share"), 0.75);
        assert!(get(&l, "repeated_8gram_share") > 0.5);
    }

    #[test]
    fn lengths_compare_answer_and_question() {
        let f = answer_form_features("abc", "abcdefg");
        assert_eq!(get(&f, "ln_answer_chars"), 8f32.ln());
        assert_eq!(get(&f, "ln_question_chars"), 4f32.ln());
        assert_eq!(get(&f, "ln_answer_over_question"), 8f32.ln() - 4f32.ln());
    }

    #[test]
    fn empty_and_unicode_text_are_fine() {
        assert!(answer_form_features("", "").iter().all(|v| *v == 0.0));
        let f = answer_form_features("Été ?\nA. −3\nB. ½", "Réponse… ½ — the answer is (B)");
        assert!(f.iter().all(|v| v.is_finite()));
        assert_eq!(get(&f, "states_letter"), 1.0);
    }
}
