//! Checks the arithmetic an answer writes out: every `a op b … = c` of
//! plain numbers (`+ - * / × ÷ x`, LaTeX `\times \cdot \div`, `$` and `%`
//! allowed) is evaluated and compared with the result it states.
//!
//! A worked answer whose own sums are wrong is seldom right, and the large
//! model usually gets those questions: on GSM8K's training rows an answer
//! with a wrong equation is rescuable 60% of the time against 24% overall.
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
        let (Some(expression), Ok(stated)) = (expression(lhs), number(rhs)) else {
            continue;
        };
        out.checked += 1;
        let (usual, left_to_right) = expression.evaluate();
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

/// A left-hand side: its first number, then each operator and the number
/// it applies.
struct Expression {
    first: f64,
    steps: Vec<(char, f64)>,
}

/// A number of the left-hand side, `%` applied.
fn operand(t: &str) -> Option<f64> {
    match t.strip_suffix('%') {
        Some(p) => Some(number(p).ok()? / 100.0),
        None => number(t).ok(),
    }
}

fn operator(t: &str) -> Option<char> {
    match t {
        "+" => Some('+'),
        "-" => Some('-'),
        "*" | "×" | "x" | "\\times" | "\\cdot" => Some('*'),
        "/" | "÷" | "\\div" => Some('/'),
        _ => None,
    }
}

/// The left-hand side, when it alternates numbers and operators.
fn expression(lhs: &str) -> Option<Expression> {
    let lhs = lhs.replace('$', "");
    let mut terms = TERM.find_iter(&lhs).map(|m| m.as_str());
    let first = operand(terms.next()?)?;
    let mut steps = Vec::new();
    while let Some(op) = terms.next() {
        steps.push((operator(op)?, operand(terms.next()?)?));
    }
    (!steps.is_empty()).then_some(Expression { first, steps })
}

fn apply(a: f64, op: char, b: f64) -> f64 {
    match op {
        '+' => a + b,
        '-' => a - b,
        '*' => a * b,
        _ => a / b,
    }
}

impl Expression {
    /// The value with the usual precedence, and read left to right.
    fn evaluate(&self) -> (f64, f64) {
        let mut left_to_right = self.first;
        // A sum of products: each summand's sign and running product.
        let mut summands = vec![(1.0, self.first)];
        for &(op, x) in &self.steps {
            left_to_right = apply(left_to_right, op, x);
            match op {
                '*' | '/' => {
                    let last = summands.last_mut().expect("one summand");
                    last.1 = apply(last.1, op, x);
                }
                _ => summands.push((if op == '-' { -1.0 } else { 1.0 }, x)),
            }
        }
        let usual = summands.iter().map(|(sign, v)| sign * v).sum();
        (usual, left_to_right)
    }
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
