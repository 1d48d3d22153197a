//! Checks the arithmetic an answer writes out: every `a op b … = c` of
//! plain numbers (`+ - * / × ÷ x`, LaTeX `\times \cdot \div`, `$` and `%`
//! allowed) is evaluated and compared with the result it states.
//!
//! A worked answer whose own sums are wrong is seldom right, and the large
//! model usually gets those questions: on GSM8K's training rows an answer
//! with a wrong equation is rescuable 62% of the time against 24% overall.
//! That is a check of the answer itself, which no feature of its form
//! gives. Equations are only trusted when they stand alone: one glued to a
//! bracket, an exponent or another operator is skipped, and a stated
//! result matching either the usual precedence or a left-to-right reading
//! (how answers often chain steps), or either rounded, counts as right.
//! Pure and microseconds a call.

use std::sync::LazyLock;

use regex::Regex;

/// `a op b [op c …] = r`, numbers with thousands separators, `$` and `%`.
static EQUATION: LazyLock<Regex> = LazyLock::new(|| {
    let num = r"\d[\d,]*(?:\.\d+)?";
    let op = r"(?:[-+*/×÷]|\bx\b|\\times|\\cdot|\\div)";
    Regex::new(&format!(
        r"(\$?{num}%?(?:\s*{op}\s*\$?{num}%?)+)\s*=\s*\$?\s*(-?{num})"
    ))
    .expect("built-in pattern")
});
static TERM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d[\d,]*(?:\.\d+)?%?|\\times|\\cdot|\\div|[-+*/×÷]|\bx\b")
        .expect("built-in pattern")
});

/// What the check found in one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArithmeticCheck {
    /// Equations evaluated.
    pub checked: usize,
    /// Of those, how many state a result that is wrong.
    pub wrong: usize,
}

/// Evaluates every stand-alone equation of `answer`.
pub fn check_arithmetic(answer: &str) -> ArithmeticCheck {
    let mut out = ArithmeticCheck::default();
    for c in EQUATION.captures_iter(answer) {
        let (whole, lhs, rhs) = (c.get(0).expect("match"), &c[1], &c[2]);
        if glued_before(&answer[..whole.start()]) || glued_after(&answer[whole.end()..]) {
            continue;
        }
        let (Some(terms), Ok(stated)) = (terms(lhs), number(rhs)) else {
            continue;
        };
        out.checked += 1;
        let (usual, left_to_right) = evaluate(&terms);
        if !matches(usual, stated) && !matches(left_to_right, stated) {
            out.wrong += 1;
        }
    }
    out
}

/// The expression continues before the match (a bracket, an operator, a
/// digit or an exponent): the match is only part of it. A `=` before it
/// is a chain (`speed = 100 / 5 = 20`), which is checked.
fn glued_before(before: &str) -> bool {
    const JOINS: &str = "._,^/*+×÷-()[]\\{";
    match before.chars().last() {
        None => false,
        Some(c) if c.is_alphanumeric() || JOINS.contains(c) => true,
        Some(_) => before
            .trim_end_matches(' ')
            .chars()
            .last()
            .is_some_and(|c| JOINS.contains(c)),
    }
}

/// The result continues after the match (`× 10^`, `e-3`, a unit's
/// division, more digits): the stated number is only part of it.
fn glued_after(after: &str) -> bool {
    let t = after.trim_start_matches(' ');
    let mut chars = t.chars();
    match chars.next() {
        Some('^' | '*' | '/' | '×' | '\\' | '(') => true,
        Some('e' | 'E') => chars.next().is_some_and(|c| c.is_ascii_digit() || c == '-'),
        Some('x') => t[1..].trim_start().starts_with("10"),
        Some(c) => c.is_ascii_digit(),
        None => false,
    }
}

/// A number as written, `,` separators dropped.
fn number(s: &str) -> Result<f64, std::num::ParseFloatError> {
    s.replace(',', "").parse()
}

/// An operand or operator of the left-hand side.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Term {
    Number(f64),
    Op(char),
}

/// The left-hand side as alternating numbers and operators, `%` applied.
fn terms(lhs: &str) -> Option<Vec<Term>> {
    let mut out = Vec::new();
    for m in TERM.find_iter(&lhs.replace('$', "")) {
        let t = m.as_str();
        let term = match t {
            "+" => Term::Op('+'),
            "-" => Term::Op('-'),
            "*" | "×" | "x" | "\\times" | "\\cdot" => Term::Op('*'),
            "/" | "÷" | "\\div" => Term::Op('/'),
            _ => match t.strip_suffix('%') {
                Some(p) => Term::Number(number(p).ok()? / 100.0),
                None => Term::Number(number(t).ok()?),
            },
        };
        out.push(term);
    }
    let alternates = out
        .iter()
        .enumerate()
        .all(|(i, t)| matches!(t, Term::Number(_)) == (i % 2 == 0));
    (alternates && out.len() >= 3 && out.len() % 2 == 1).then_some(out)
}

fn apply(a: f64, op: char, b: f64) -> f64 {
    match op {
        '+' => a + b,
        '-' => a - b,
        '*' => a * b,
        _ => a / b,
    }
}

/// The value with the usual precedence, and read left to right.
fn evaluate(terms: &[Term]) -> (f64, f64) {
    let num = |t: &Term| match t {
        Term::Number(x) => *x,
        Term::Op(_) => f64::NAN,
    };
    let op = |t: &Term| match t {
        Term::Op(o) => *o,
        Term::Number(_) => '+',
    };
    let mut left_to_right = num(&terms[0]);
    // Sums of products: `sums` holds the running product of each summand.
    let mut sums = vec![(1.0, num(&terms[0]))];
    for pair in terms[1..].chunks(2) {
        let (o, x) = (op(&pair[0]), num(&pair[1]));
        left_to_right = apply(left_to_right, o, x);
        match o {
            '*' | '/' => {
                let last = sums.last_mut().expect("one summand");
                last.1 = apply(last.1, o, x);
            }
            _ => sums.push((if o == '-' { -1.0 } else { 1.0 }, x)),
        }
    }
    let usual = sums.iter().map(|(sign, v)| sign * v).sum();
    (usual, left_to_right)
}

/// Whether `value` is what `stated` says, allowing the rounding answers
/// use (about 1%, to whole numbers, or a share written as a percent).
fn matches(value: f64, stated: f64) -> bool {
    if !value.is_finite() {
        return false;
    }
    let tol = (0.011 * stated.abs()).max(0.006);
    (value - stated).abs() <= tol
        || (value * 100.0 - stated).abs() <= tol * 100.0
        || value.round() == stated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> (usize, usize) {
        let c = check_arithmetic(s);
        (c.checked, c.wrong)
    }

    #[test]
    fn right_sums_pass_and_wrong_ones_are_counted() {
        assert_eq!(check("So 32 - 4 = 28 and 28 / 2 = 14 fish."), (2, 0));
        assert_eq!(check("He pays 3 * $12 + $5 = $41."), (1, 0));
        assert_eq!(check("Total: 1,800 x 2,073,600 = 3,374,880,000."), (1, 1));
        assert_eq!(check("so 22 + 7 = 88 apples"), (1, 1));
    }

    #[test]
    fn rounding_percent_and_chained_steps_count_as_right() {
        assert_eq!(check("Each gets 10 / 3 = 3.33 cups."), (1, 0));
        assert_eq!(check("A share of 30 / 120 = 25%."), (1, 0));
        assert_eq!(check("20% * 50 = 10"), (1, 0));
        // Left to right, as a running total is often written.
        assert_eq!(check("40 / 2 + 5 = 25, then"), (1, 0));
        assert_eq!(check("40 + 2 * 5 = 210"), (1, 0));
    }

    #[test]
    fn equations_glued_to_more_are_skipped() {
        assert_eq!(check("(7 + 12 + 48 - 48) = 19"), (0, 0));
        assert_eq!(check("x = 2^3 + 1 = 9"), (0, 0));
        assert_eq!(check("6.02 * 2 = 1.2 x 10^24"), (0, 0));
        assert_eq!(check("3 * 4 = 1.2e1"), (0, 0));
        assert_eq!(check("speed = 100 / 5 = 20 m/s"), (1, 0));
        assert_eq!(check("no arithmetic here"), (0, 0));
    }
}
