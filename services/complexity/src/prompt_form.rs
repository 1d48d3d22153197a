//! Features of a prompt's form, beside its meaning: whether it is multiple
//! choice and how many options it has, how long the question and options
//! are, how numeric it is, and what kind of question it asks.
//!
//! A mean-pooled, normalised sentence embedding keeps the topic but loses
//! length and structure; these few numbers put them back for the head.
//! Computed on the (truncated) text the router scores, in microseconds.

use std::sync::LazyLock;

use regex::Regex;

/// Feature tag of the form features, part of a head's `features`.
pub const FORM_FEATURES: &str = "prompt-form/1";

/// Names of the features, in order (documented in the head file).
pub const FORM_NAMES: [&str; FORM_DIM] = [
    "multiple_choice",
    "options_per_10",
    "ln_stem_chars",
    "ln_mean_option_chars",
    "numeric_option_share",
    "ln_digits",
    "ln_numbers",
    "dollar_or_backslash",
    "ends_with_question_mark",
    "asks_to_compute",
    "asks_open_ended",
    "negated_question",
    "ln_stem_lines",
];

/// Number of form features.
pub const FORM_DIM: usize = 13;

static COMPUTE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(calculate|compute|find|determine|estimate|solve|how (many|much))\b")
        .expect("built-in pattern")
});
static OPEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(write|explain|describe|give|list|summari[sz]e|create|generate|tell|suggest)\b",
    )
    .expect("built-in pattern")
});
static NEGATED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(not|except|least|false|incorrect)\b").expect("built-in pattern")
});

/// An option line as the sources render them: `A. text` … `J. text`.
fn option_body(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    (b.len() >= 3 && (b'A'..=b'J').contains(&b[0]) && b[1] == b'.' && b[2] == b' ')
        .then(|| &line[3..])
}

/// A numeric option: a number first, maybe after a sign or currency sign.
fn is_numeric(body: &str) -> bool {
    let t = body
        .trim_start()
        .trim_start_matches(['-', '+', '$', '−', '£', '€']);
    t.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// Maximal runs of ASCII digits.
fn count_numbers(text: &str) -> usize {
    let mut count = 0;
    let mut in_number = false;
    for c in text.chars() {
        let digit = c.is_ascii_digit();
        if digit && !in_number {
            count += 1;
        }
        in_number = digit;
    }
    count
}

fn ln1p(v: usize) -> f32 {
    (v as f32).ln_1p()
}

/// The form features of `text`, in the order of [`FORM_NAMES`].
pub fn form_features(text: &str) -> [f32; FORM_DIM] {
    let mut options: Vec<&str> = Vec::new();
    let mut stem_lines: Vec<&str> = Vec::new();
    for line in text.lines() {
        match option_body(line) {
            Some(body) => options.push(body),
            None => stem_lines.push(line),
        }
    }
    let stem = stem_lines.join("\n");
    let stem = stem.trim();
    let n_opt = options.len();
    let mean_option = options
        .iter()
        .map(|o| o.chars().count())
        .sum::<usize>()
        .checked_div(n_opt)
        .unwrap_or(0);
    let numeric = options.iter().filter(|o| is_numeric(o)).count();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    [
        flag(n_opt >= 2),
        n_opt as f32 / 10.0,
        ln1p(stem.chars().count()),
        ln1p(mean_option),
        if n_opt == 0 {
            0.0
        } else {
            numeric as f32 / n_opt as f32
        },
        ln1p(text.chars().filter(char::is_ascii_digit).count()),
        ln1p(count_numbers(stem)),
        flag(text.contains('$') || text.contains('\\')),
        flag(stem.ends_with('?')),
        flag(COMPUTE.is_match(stem)),
        flag(OPEN.is_match(stem)),
        flag(NEGATED.is_match(stem)),
        ln1p(stem.lines().count()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(f: &[f32; FORM_DIM], name: &str) -> f32 {
        f[FORM_NAMES.iter().position(|n| *n == name).unwrap()]
    }

    #[test]
    fn reads_a_multiple_choice_question() {
        let text = "Which of these is not a prime?\nA. 2\nB. 9\nC. $5\nD. seven";
        let f = form_features(text);
        assert_eq!(get(&f, "multiple_choice"), 1.0);
        assert_eq!(get(&f, "options_per_10"), 0.4);
        assert_eq!(get(&f, "numeric_option_share"), 0.75);
        assert_eq!(get(&f, "ends_with_question_mark"), 1.0);
        assert_eq!(get(&f, "negated_question"), 1.0);
        assert_eq!(get(&f, "asks_open_ended"), 0.0);
        assert_eq!(get(&f, "dollar_or_backslash"), 1.0);
        // The stem alone: 30 characters, one line, no digits.
        assert_eq!(get(&f, "ln_stem_chars"), 31f32.ln());
        assert_eq!(get(&f, "ln_stem_lines"), 2f32.ln());
        assert_eq!(get(&f, "ln_numbers"), 0.0);
        // Option bodies "2", "9", "$5", "seven": 2 characters on average.
        assert_eq!(get(&f, "ln_mean_option_chars"), 3f32.ln());
        assert_eq!(get(&f, "ln_digits"), 4f32.ln());
    }

    #[test]
    fn reads_a_word_problem_and_an_open_request() {
        let w = form_features("Tom has 12 apples and buys 30 more. How many apples does he have?");
        assert_eq!(get(&w, "multiple_choice"), 0.0);
        assert_eq!(get(&w, "asks_to_compute"), 1.0);
        assert_eq!(get(&w, "ln_numbers"), 3f32.ln());
        assert_eq!(get(&w, "ln_digits"), 5f32.ln());
        let o = form_features("Write a short poem about the sea.");
        assert_eq!(get(&o, "asks_open_ended"), 1.0);
        assert_eq!(get(&o, "asks_to_compute"), 0.0);
        assert_eq!(get(&o, "ends_with_question_mark"), 0.0);
    }

    #[test]
    fn lines_that_only_look_like_options_are_stem() {
        // Lower case, K and no space after the dot are not options.
        let f = form_features("a. one\nK. two\nB.three\nA. real");
        assert_eq!(
            get(&f, "multiple_choice"),
            0.0,
            "one option is not a choice"
        );
        assert_eq!(get(&f, "options_per_10"), 0.1);
        assert_eq!(get(&f, "ln_stem_lines"), 4f32.ln());
    }

    #[test]
    fn empty_and_unicode_text_are_fine() {
        assert!(form_features("").iter().all(|v| *v == 0.0));
        let f = form_features("Été ? −3 ü\nA. −3\nB. ½");
        assert!(f.iter().all(|v| v.is_finite()));
        assert_eq!(get(&f, "numeric_option_share"), 0.5);
    }
}
