//! Rules that force tier 2 without asking the model: fenced code,
//! code-like syntax, math notation and configurable keyword patterns.
//!
//! Small quantised models lose most on code and math, and these are cheap
//! to spot, so a match settles the decision (and skips the embedding).
//! Patterns are tuned to stay quiet on prose: a dollar amount, a date or a
//! list of numbers is not math; one semicolon is not code.

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

/// A named pattern that forces tier 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeywordRule {
    /// Appears in the reason as `rule:keyword:<name>`.
    pub name: String,
    /// A regular expression (Rust `regex` syntax; `(?i)` for any case).
    pub pattern: String,
}

/// Which rules are on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// Markdown code fences (```` ``` ```` or `~~~` opening a line).
    pub code_fence: bool,
    /// Code-like syntax: definitions, includes, statement lines, SQL, tags.
    pub code_syntax: bool,
    /// Math notation: LaTeX, equations with variables, operators between
    /// numbers, math symbols.
    pub math: bool,
    /// Extra patterns, checked after the built-in rules.
    pub keywords: Vec<KeywordRule>,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            code_fence: true,
            code_syntax: true,
            math: true,
            keywords: Vec::new(),
        }
    }
}

impl RuleConfig {
    /// Every rule off.
    pub fn none() -> Self {
        Self {
            code_fence: false,
            code_syntax: false,
            math: false,
            keywords: Vec::new(),
        }
    }
}

/// Which rule fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    /// `code_fence`, `code_syntax`, `math` or `keyword:<name>`.
    pub rule: String,
}

impl RuleMatch {
    /// The decision reason, `rule:<rule>`.
    pub fn reason(&self) -> String {
        format!("rule:{}", self.rule)
    }
}

/// A keyword pattern that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("keyword rule {name:?}: invalid pattern: {source}")]
pub struct InvalidRule {
    /// The rule's name.
    pub name: String,
    /// The regex error.
    #[source]
    pub source: regex::Error,
}

const CODE_FENCE: &str = r"(?m)^[ \t]*(```|~~~)";

/// Any one of these is code. Each is specific enough not to fire on prose.
const CODE_SYNTAX: &[&str] = &[
    // Python / Ruby definitions ending in a colon or paren.
    r"(?m)^[ \t]*(def|class)[ \t]+[A-Za-z_]\w*[ \t]*[(:]",
    // C-family includes and preprocessor lines.
    r"(?m)^[ \t]*#(include|define|ifndef|pragma)\b",
    // Function definitions in JS/Go/Rust/PHP.
    r"\b(function|func|fn)[ \t]+[A-Za-z_]\w*[ \t]*(<[^>\n]*>)?\(",
    // Java / C# / C++ signatures.
    r"\b(public|private|protected)[ \t]+(static[ \t]+)?(void|int|bool|boolean|String|class|def)\b",
    // Imports as statements on their own line.
    r"(?m)^[ \t]*(import[ \t]+[\w.]+[ \t]*;?[ \t]*$|from[ \t]+[\w.]+[ \t]+import[ \t]+\w+|using[ \t]+namespace[ \t]+\w+|use[ \t]+\w+(::\w+)+)",
    // Calls in well-known APIs.
    r"\b(console\.log|System\.out\.print\w*|printf|println!|std::\w+|np\.\w+|pd\.\w+)[ \t]*\(",
    // Upper-case SQL.
    r"\b(SELECT[ \t\n]+[\w*,. \t]+[ \t\n]FROM|INSERT[ \t]+INTO|CREATE[ \t]+TABLE|UPDATE[ \t]+\w+[ \t]+SET)\b",
    // HTML / XML tags from markup code.
    r"</?(div|span|html|body|script|table|svg|template)\b[^>\n]*>",
    // Assignment of a call or literal ending in a semicolon, `x = f(y);`.
    r"(?m)\w[ \t]*=[ \t]*[^=\n;]{1,80}\)[ \t]*;[ \t]*$",
    // Arrow functions and lambdas, `(a, b) => {` / `x -> x + 1`.
    r"\)[ \t]*=>[ \t]*[{(]|\blambda[ \t]+\w+[ \t]*:",
];

/// At least two lines ending in `;`, `{` or `}` on their own: statements.
const STATEMENT_LINE: &str = r"(?m)[;{}][ \t]*$";

/// Any one of these is math.
const MATH: &[&str] = &[
    // LaTeX commands and delimiters.
    r"\\(frac|dfrac|sqrt|sum|prod|int|oint|lim|log|ln|sin|cos|tan|begin\{|mathbb|mathrm|cdot|times|div|pm|leq?|geq?|neq|infty|partial|nabla|alpha|beta|gamma|delta|theta|lambda|sigma|omega|pi)\b",
    r"\\\(|\\\[|\$\$",
    r"\$[^$\n]*\\[A-Za-z]+[^$\n]*\$",
    // Math symbols.
    r"[∑∏∫∮√∞≤≥≠≈±∓∂∇∆×÷∈∉⊂⊆∪∩]",
    // Powers and equations with a variable: x^2, 3x + 2 = 11, f(x) =, y = 2x.
    r"\b[A-Za-z]\s*\^\s*[-\d({]",
    r"\b\d+[a-z]\b\s*[-+*/]\s*\d",
    r"\b[a-z]\s*[-+*/]\s*\d+\s*=",
    r"\b[a-z]\([a-z]\)\s*=",
    r"(^|[\s(])[a-z]\s*=\s*-?\d*[a-z(]\s*[-+*/^]",
    // Operators between numbers: 12 * 7, 2^10, 3 + 4 =, 5 × 6.
    r"\d\s*[*^]\s*\d|\d\s*\+\s*\d+\s*=|\d+\s*=\s*\d+\s*[-+*/]\s*\d",
];

/// The compiled rules.
pub struct RuleSet {
    code_fence: Option<Regex>,
    code_syntax: Option<RegexSet>,
    statement_line: Option<Regex>,
    math: Option<RegexSet>,
    keywords: Vec<(String, Regex)>,
}

impl RuleSet {
    /// Compiles the configured rules.
    pub fn new(config: &RuleConfig) -> Result<Self, InvalidRule> {
        // The built-in patterns are constants covered by tests.
        let builtin = |p: &str| Regex::new(p).expect("built-in rule pattern");
        let set = |ps: &[&str]| RegexSet::new(ps).expect("built-in rule patterns");
        let keywords = config
            .keywords
            .iter()
            .map(|k| {
                Regex::new(&k.pattern)
                    .map(|re| (k.name.clone(), re))
                    .map_err(|source| InvalidRule {
                        name: k.name.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            code_fence: config.code_fence.then(|| builtin(CODE_FENCE)),
            code_syntax: config.code_syntax.then(|| set(CODE_SYNTAX)),
            statement_line: config.code_syntax.then(|| builtin(STATEMENT_LINE)),
            math: config.math.then(|| set(MATH)),
            keywords,
        })
    }

    /// The first rule that fires on `text`, in the order code fence, code
    /// syntax, math, keywords.
    pub fn first_match(&self, text: &str) -> Option<RuleMatch> {
        let hit = |rule: &str| {
            Some(RuleMatch {
                rule: rule.to_string(),
            })
        };
        if self.code_fence.as_ref().is_some_and(|re| re.is_match(text)) {
            return hit("code_fence");
        }
        if self
            .code_syntax
            .as_ref()
            .is_some_and(|set| set.is_match(text))
            || self
                .statement_line
                .as_ref()
                .is_some_and(|re| re.find_iter(text).nth(1).is_some())
        {
            return hit("code_syntax");
        }
        if self.math.as_ref().is_some_and(|set| set.is_match(text)) {
            return hit("math");
        }
        self.keywords
            .iter()
            .find(|(_, re)| re.is_match(text))
            .and_then(|(name, _)| hit(&format!("keyword:{name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Option<String> {
        RuleSet::new(&RuleConfig::default())
            .unwrap()
            .first_match(text)
            .map(|m| m.rule)
    }

    #[test]
    fn fenced_code_forces_tier2() {
        assert_eq!(
            rule("Why does this fail?\n```\nlet x = 1\n```").as_deref(),
            Some("code_fence")
        );
        assert_eq!(
            rule("~~~python\nprint(1)\n~~~").as_deref(),
            Some("code_fence")
        );
    }

    #[test]
    fn code_like_syntax_forces_tier2() {
        for text in [
            "def fib(n):\n    return n",
            "#include <stdio.h>",
            "function add(a, b) { return a + b }",
            "public static void main(String[] args)",
            "from collections import deque",
            "SELECT name, age FROM users WHERE age > 3",
            "console.log(x)",
            "int x = 1;\nint y = 2;",
            "<div class=\"a\">hi</div>",
            "const f = (a, b) => { return a; }",
            "result = compute(a, b);",
        ] {
            assert_eq!(rule(text).as_deref(), Some("code_syntax"), "{text}");
        }
    }

    #[test]
    fn math_notation_forces_tier2() {
        for text in [
            r"Evaluate \frac{1}{2} + \frac{1}{3}",
            r"Prove that $a \leq b$",
            "Find x if x^2 = 16",
            "Solve 3x + 2 = 11",
            "Let f(x) = 2x + 1",
            "What is 12 * 7?",
            "Compute 2^10",
            "∫ sin x dx",
            "Is 5 × 6 larger than 29?",
        ] {
            assert_eq!(rule(text).as_deref(), Some("math"), "{text}");
        }
    }

    #[test]
    fn prose_with_numbers_is_left_to_the_model() {
        for text in [
            "Why does warmth make you feel tired?",
            "Tom has $18 and buys 3 apples for $2 each. How much is left?",
            "The meeting is on 12/05/2020 from 9-11 am.",
            "List 3, 5 and 7 as primes; explain why.",
            "A. 625.8 hrs. to 315.9 hrs.\nB. 680.3 hrs. to 350.4 hrs.",
            "Write a poem about the sea.",
            "I want to import goods from China. What taxes apply?",
        ] {
            assert_eq!(rule(text), None, "{text}");
        }
    }

    #[test]
    fn keyword_rules_are_configurable_and_named() {
        let config = RuleConfig {
            keywords: vec![KeywordRule {
                name: "legal".into(),
                pattern: r"(?i)\bcontract\b".into(),
            }],
            ..RuleConfig::none()
        };
        let rules = RuleSet::new(&config).unwrap();
        let m = rules.first_match("Review this Contract please").unwrap();
        assert_eq!(m.reason(), "rule:keyword:legal");
        assert!(
            rules.first_match("def f(x):").is_none(),
            "built-ins are off"
        );
    }

    #[test]
    fn bad_keyword_pattern_is_a_clear_error() {
        let config = RuleConfig {
            keywords: vec![KeywordRule {
                name: "broken".into(),
                pattern: "(".into(),
            }],
            ..RuleConfig::default()
        };
        let err = RuleSet::new(&config).err().unwrap();
        assert!(err.to_string().contains("broken"));
    }
}
