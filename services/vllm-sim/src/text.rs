//! Deterministic pseudo-text: what the simulated model "generates".
//!
//! Tokens are words from a small embedded list (at most 7 letters, so each is one token
//! under `triage_token_estimate::count`) and occasional `,` / `.` marks. Everything — words,
//! natural length, logprobs — comes from one [`SimRng`] seeded by the caller (the server seeds
//! it from the instance seed, the request's `seed`, the prompt text and the choice index).

use crate::rng::SimRng;

const WORDS: &[&str] = &[
    "the", "a", "model", "answer", "request", "token", "stream", "router", "cost", "tier", "small",
    "large", "fast", "slow", "cheap", "queue", "worker", "reply", "latency", "budget", "simple",
    "complex", "prompt", "result", "value", "data", "system", "engine", "server", "client",
    "signal", "batch", "cache", "memory", "graph", "vector", "number", "letter", "word", "line",
    "page", "story", "river", "stone", "light", "cloud", "green", "blue", "quiet", "bright",
    "early", "later", "often", "never", "always", "maybe", "since", "until", "while", "under",
    "over", "between", "through", "across", "around", "about", "and", "or", "but", "so", "then",
    "is", "was", "will", "can", "may", "should", "could", "would", "must", "has", "have", "make",
    "take", "give", "find", "keep", "send", "read", "write", "build", "check", "learn", "count",
    "route", "serve", "wait", "start", "finish", "return", "in", "on", "of", "to", "for", "with",
];

/// One generated token with its log-probability and the alternatives reported as
/// `top_logprobs` (the token itself included), most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct GenToken {
    /// Text of the token, leading space included.
    pub text: String,
    /// Natural log of its probability.
    pub logprob: f64,
    /// Candidates (text, logprob), sorted by logprob descending; empty unless asked for.
    pub top: Vec<(String, f64)>,
}

/// Why generation ended, as vLLM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The model emitted end-of-sequence (`finish_reason: "stop"`, `stop_reason: null`).
    Eos,
    /// A stop string matched (`finish_reason: "stop"`, `stop_reason: "<the string>"`).
    StopString(String),
    /// `max_tokens` reached (`finish_reason: "length"`).
    Length,
}

impl Finish {
    /// The OpenAI `finish_reason` value.
    pub fn reason(&self) -> &'static str {
        match self {
            Finish::Eos | Finish::StopString(_) => "stop",
            Finish::Length => "length",
        }
    }

    /// vLLM's extra `stop_reason` field.
    pub fn stop_reason(&self) -> Option<&str> {
        match self {
            Finish::StopString(s) => Some(s),
            _ => None,
        }
    }
}

/// A complete generation for one choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Tokens in order; with a stop string the last one is cut before it (maybe to "").
    pub tokens: Vec<GenToken>,
    /// Why it ended.
    pub finish: Finish,
}

impl Generation {
    /// The full text.
    pub fn text(&self) -> String {
        self.tokens.iter().map(|t| t.text.as_str()).collect()
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenParams<'a> {
    /// Natural length range (the model stops by itself after a length drawn from it).
    pub natural_len: (u32, u32),
    /// Upper bound on tokens (the request's `max_tokens`, or what the context leaves).
    pub max_tokens: u32,
    /// Stop strings; the first match ends the text (the match excluded).
    pub stop: &'a [String],
    /// Range of token logprobs.
    pub logprob_range: (f64, f64),
    /// How many `top_logprobs` candidates per token (0 = none).
    pub top_logprobs: u32,
    /// Wrap the words as one JSON object, `{"answer": "..."}` (two tokens of
    /// the count; cut by `max_tokens` like any text).
    pub json: bool,
}

/// Generates one choice from `rng`.
pub fn generate(rng: &mut SimRng, params: &GenParams<'_>) -> Generation {
    let natural = rng.range_u64(
        u64::from(params.natural_len.0),
        u64::from(params.natural_len.1),
    ) as u32;
    // JSON mode spends two tokens on the object's opening and closing.
    let budget = if params.json {
        params.max_tokens.saturating_sub(2)
    } else {
        params.max_tokens
    };
    let (count, mut finish) = if natural < budget {
        (natural, Finish::Eos)
    } else {
        (budget, Finish::Length)
    };

    let mut tokens = Vec::with_capacity(count as usize);
    let mut previous_was_mark = true; // no mark first
    let mut capitalise = true;
    for i in 0..count {
        let mark = !previous_was_mark && i + 1 < count && rng.next_f64() < 0.12;
        let text = if mark {
            let m = if rng.next_f64() < 0.6 { "," } else { "." };
            capitalise = m == ".";
            m.to_owned()
        } else {
            let word = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
            let word = if capitalise {
                capitalise = false;
                let mut c = word.chars();
                c.next()
                    .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                    .unwrap_or_default()
            } else {
                word.to_owned()
            };
            if i == 0 {
                word
            } else {
                format!(" {word}")
            }
        };
        previous_was_mark = mark;
        let (lo, hi) = params.logprob_range;
        let logprob = (lo + (hi - lo) * rng.next_f64()).max(-9999.0);
        let top = top_candidates(rng, &text, logprob, params.top_logprobs);
        tokens.push(GenToken { text, logprob, top });
    }

    if let Some((cut_at, stop)) = first_stop(&tokens, params.stop) {
        let mut offset = 0;
        let mut kept = Vec::new();
        for mut token in tokens {
            let end = offset + token.text.len();
            if end > cut_at {
                token.text.truncate(cut_at - offset);
                kept.push(token);
                break;
            }
            offset = end;
            kept.push(token);
        }
        tokens = kept;
        finish = Finish::StopString(stop);
    }
    if params.json {
        tokens = as_json_object(rng, tokens, params.logprob_range);
    }
    Generation { tokens, finish }
}

/// A scripted reply as a generation: one token per word (its leading space
/// included), cut at `max_tokens`, every token at `logprob`.
pub fn scripted(reply: &str, max_tokens: u32, logprob: f64) -> Generation {
    let mut tokens: Vec<GenToken> = Vec::new();
    for (i, word) in reply.split(' ').enumerate() {
        let text = if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        };
        tokens.push(GenToken {
            text,
            logprob,
            top: Vec::new(),
        });
    }
    let finish = if tokens.len() > max_tokens as usize {
        tokens.truncate(max_tokens as usize);
        Finish::Length
    } else {
        Finish::Eos
    };
    Generation { tokens, finish }
}

/// `{"answer": "<the words>"}`: the words hold no quotes or backslashes.
fn as_json_object(rng: &mut SimRng, words: Vec<GenToken>, range: (f64, f64)) -> Vec<GenToken> {
    let mut token = |text: &str| GenToken {
        text: text.to_string(),
        logprob: (range.0 + (range.1 - range.0) * rng.next_f64()).max(-9999.0),
        top: Vec::new(),
    };
    let mut out = vec![token("{\"answer\": \"")];
    let close = token("\"}");
    out.extend(words);
    out.push(close);
    out
}

/// Byte offset of the earliest stop-string match in the joined text, and which string.
fn first_stop(tokens: &[GenToken], stops: &[String]) -> Option<(usize, String)> {
    if stops.is_empty() {
        return None;
    }
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.clone())))
        .min_by_key(|(at, _)| *at)
}

/// The chosen token plus `k - 1` alternatives sharing the remaining probability mass
/// (halving each time), sorted most likely first.
fn top_candidates(rng: &mut SimRng, chosen: &str, logprob: f64, k: u32) -> Vec<(String, f64)> {
    if k == 0 {
        return Vec::new();
    }
    let rest = (1.0 - logprob.exp()).max(1e-6);
    let mut top = vec![(chosen.to_owned(), logprob)];
    let mut share = 0.5;
    while top.len() < k as usize {
        let word = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
        let text = format!(" {word}");
        if top.iter().any(|(t, _)| *t == text) {
            continue;
        }
        top.push((text, (rest * share).ln().max(-9999.0)));
        share /= 2.0;
    }
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(stop: &[String]) -> GenParams<'_> {
        GenParams {
            natural_len: (20, 20),
            json: false,
            max_tokens: 100,
            stop,
            logprob_range: (-2.0, -0.1),
            top_logprobs: 3,
        }
    }

    #[test]
    fn json_mode_is_one_object_within_max_tokens() {
        for max_tokens in [3, 10, 100] {
            let p = GenParams {
                json: true,
                max_tokens,
                ..params(&[])
            };
            let g = generate(&mut SimRng::new(4), &p);
            let text: String = g.tokens.iter().map(|t| t.text.as_str()).collect();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["answer"].is_string(), "{text}");
            assert!(g.tokens.len() <= max_tokens as usize, "{text}");
        }
    }

    #[test]
    fn a_scripted_reply_is_sent_whole_or_cut_at_max_tokens() {
        let g = scripted("Fine answer. Rating: [[8]]", 16, -0.1);
        assert_eq!(g.text(), "Fine answer. Rating: [[8]]");
        assert_eq!((g.tokens.len(), g.finish.clone()), (4, Finish::Eos));
        let g = scripted("Fine answer. Rating: [[8]]", 2, -0.1);
        assert_eq!(
            (g.text().as_str(), g.finish),
            ("Fine answer.", Finish::Length)
        );
    }

    #[test]
    fn deterministic_and_seed_sensitive() {
        let a = generate(&mut SimRng::new(9), &params(&[]));
        let b = generate(&mut SimRng::new(9), &params(&[]));
        let c = generate(&mut SimRng::new(10), &params(&[]));
        assert_eq!(a, b);
        assert_ne!(a.text(), c.text());
    }

    #[test]
    fn natural_eos_versus_length() {
        let g = generate(&mut SimRng::new(1), &params(&[]));
        assert_eq!(g.tokens.len(), 20);
        assert_eq!(g.finish, Finish::Eos);
        let mut p = params(&[]);
        p.max_tokens = 5;
        let g = generate(&mut SimRng::new(1), &p);
        assert_eq!(g.tokens.len(), 5);
        assert_eq!(g.finish, Finish::Length);
    }

    #[test]
    fn text_token_count_matches_generated_tokens() {
        for seed in 0..50 {
            let g = generate(&mut SimRng::new(seed), &params(&[]));
            assert_eq!(
                triage_token_estimate::count(&g.text()) as usize,
                g.tokens.len(),
                "{}",
                g.text()
            );
        }
    }

    #[test]
    fn stop_string_cuts_text_and_is_reported() {
        let full = generate(&mut SimRng::new(3), &params(&[])).text();
        // Pick the third word as the stop string.
        let stop = full.split(' ').nth(2).unwrap().trim_matches([',', '.']);
        let stop = format!(" {stop}");
        let stops = vec![stop.clone()];
        let g = generate(&mut SimRng::new(3), &params(&stops));
        assert_eq!(g.finish, Finish::StopString(stop.clone()));
        assert!(!g.text().contains(&stop));
        assert!(full.starts_with(&g.text()));
    }

    #[test]
    fn top_logprobs_sorted_and_contain_chosen() {
        let g = generate(&mut SimRng::new(5), &params(&[]));
        for t in &g.tokens {
            assert_eq!(t.top.len(), 3);
            assert!(t.top.windows(2).all(|w| w[0].1 >= w[1].1));
            assert!(t.top.iter().any(|(s, lp)| *s == t.text && *lp == t.logprob));
            assert!((-2.0..=-0.1).contains(&t.logprob));
        }
    }
}
