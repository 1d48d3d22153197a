//! The judge's fixed single-answer rubric and the reading of its rating.
//! Pure: no I/O.
//!
//! The prompt is MT-Bench's single-answer grading prompt (Zheng et al.,
//! 2023): the judge explains briefly, then rates 1 to 10 in the form
//! `Rating: [[7]]`. An answer is good at 7 or more, the rule of the
//! shipped data. Judges do not always keep to the form, so the parser
//! takes, in order: the last `[[n]]`, then the last `Rating: n` (with or
//! without brackets, `n/10`), then a lone number that is the whole reply;
//! anything else is no rating.

use triage_protocol::shadow::GOOD_SCORE;
use triage_protocol::ChatMessage;

/// The judge's system prompt.
pub const SYSTEM: &str = "You are a helpful assistant.";

/// The rubric, with `{question}` and `{answer}` filled in.
const TEMPLATE: &str = "[Instruction]\n\
Please act as an impartial judge and evaluate the quality of the response provided by an AI \
assistant to the user question displayed below. Your evaluation should consider factors such as \
the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. \
Begin your evaluation by providing a short explanation. Be as objective as possible. After \
providing your explanation, you must rate the response on a scale of 1 to 10 by strictly \
following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n\
[Question]\n{question}\n\n\
[The Start of Assistant's Answer]\n{answer}\n\
[The End of Assistant's Answer]";

/// The judge's messages for grading `answer` to the conversation `asked`.
pub fn prompt(asked: &[ChatMessage], answer: &str) -> Vec<ChatMessage> {
    let question = asked
        .iter()
        .map(|m| match m.role.as_str() {
            "user" => m.content.clone(),
            role => format!("({role}) {}", m.content),
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    let text = TEMPLATE
        .replace("{question}", &question)
        .replace("{answer}", answer);
    vec![ChatMessage::system(SYSTEM), ChatMessage::user(text)]
}

/// Whether a score is a good one.
pub fn is_good(score: f64) -> bool {
    score >= GOOD_SCORE
}

/// The rating in a judge's reply, 1 to 10, if it gave one.
pub fn parse_rating(reply: &str) -> Option<f64> {
    last_bracketed(reply)
        .or_else(|| after_label(reply))
        .or_else(|| lone_number(reply))
        .filter(|s| (1.0..=10.0).contains(s))
}

/// The last `[[n]]`.
fn last_bracketed(reply: &str) -> Option<f64> {
    reply.rmatch_indices("[[").find_map(|(i, _)| {
        let rest = &reply[i + 2..];
        let end = rest.find("]]")?;
        number(rest[..end].trim())
    })
}

/// The number after the last `rating:` (any case), brackets or `/10` around it.
fn after_label(reply: &str) -> Option<f64> {
    let lower = reply.to_ascii_lowercase();
    lower.rmatch_indices("rating").find_map(|(i, _)| {
        let rest = reply[i + "rating".len()..].trim_start();
        let rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
        let rest = rest.trim_start_matches(['[', '*', ' ']);
        leading_number(rest)
    })
}

/// A reply that is only a number (`8`, `8/10`, `8.5`).
fn lone_number(reply: &str) -> Option<f64> {
    let t = reply.trim().trim_end_matches('.');
    let t = t.strip_suffix("/10").unwrap_or(t);
    number(t.trim())
}

/// The number a text starts with.
fn leading_number(text: &str) -> Option<f64> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    number(text[..end].trim_end_matches('.'))
}

fn number(text: &str) -> Option<f64> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt_bench_ratings_are_read() {
        assert_eq!(
            parse_rating("Clear and correct.\n\nRating: [[7]]"),
            Some(7.0)
        );
        assert_eq!(parse_rating("[[10]]"), Some(10.0));
        assert_eq!(parse_rating("Rating: [[8.5]]"), Some(8.5));
        // The format example quoted first, the verdict last: the last counts.
        assert_eq!(
            parse_rating("Format is \"[[rating]]\", e.g. [[5]]. My verdict: [[3]]"),
            Some(3.0)
        );
    }

    #[test]
    fn loose_ratings_are_read_too() {
        assert_eq!(parse_rating("Rating: 6"), Some(6.0));
        assert_eq!(parse_rating("**Rating:** 9/10"), Some(9.0));
        assert_eq!(parse_rating("rating: [4]"), Some(4.0));
        assert_eq!(parse_rating("  8 "), Some(8.0));
        assert_eq!(parse_rating("7/10."), Some(7.0));
    }

    #[test]
    fn no_rating_or_one_out_of_range_is_none() {
        assert_eq!(parse_rating("I cannot judge this."), None);
        assert_eq!(parse_rating("Rating: [[rating]]"), None);
        assert_eq!(parse_rating("Rating: [[11]]"), None);
        assert_eq!(parse_rating("[[0]]"), None);
        assert_eq!(parse_rating("There are 3 issues with it."), None);
        assert_eq!(parse_rating(""), None);
    }

    #[test]
    fn good_is_seven_or_more() {
        assert!(is_good(7.0) && is_good(10.0));
        assert!(!is_good(6.9) && !is_good(1.0));
    }

    #[test]
    fn the_prompt_carries_the_question_and_the_answer() {
        let asked = vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("What is 2+2?"),
        ];
        let m = prompt(&asked, "4");
        assert_eq!(m.len(), 2);
        assert!(m[1].content.contains("(system) Be brief.\n\nWhat is 2+2?"));
        assert!(m[1]
            .content
            .contains("[The Start of Assistant's Answer]\n4\n"));
        assert!(m[1].content.contains("Rating: [[5]]"));
    }
}
