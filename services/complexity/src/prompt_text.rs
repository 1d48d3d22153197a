//! The text that decides the tier: the last user message, followed by the
//! system message(s).
//!
//! The user message comes first so that, when truncation cuts, it cuts the
//! (often long and shared) system preamble rather than the request itself.
//! Earlier turns are left out: the question being asked now is what the
//! tier must be able to answer.

use triage_protocol::ChatMessage;

/// Separates the user and system parts.
pub const PART_SEPARATOR: &str = "\n\n";

/// The text to score for a conversation; empty when it has no user or
/// system text.
pub fn text_to_score(messages: &[ChatMessage]) -> String {
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.trim())
        .filter(|c| !c.is_empty());
    let mut parts: Vec<&str> = Vec::new();
    if let Some(user) = last_user {
        parts.push(user);
    }
    parts.extend(
        messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.trim())
            .filter(|c| !c.is_empty()),
    );
    parts.join(PART_SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn last_user_message_then_system() {
        let conv = [
            msg("system", "You are terse."),
            msg("user", "first question"),
            msg("assistant", "an answer"),
            msg("user", "  second question "),
        ];
        assert_eq!(text_to_score(&conv), "second question\n\nYou are terse.");
    }

    #[test]
    fn plain_prompt_is_its_own_text() {
        assert_eq!(text_to_score(&[ChatMessage::user("hi")]), "hi");
    }

    #[test]
    fn nothing_to_score_is_empty() {
        assert_eq!(text_to_score(&[]), "");
        assert_eq!(
            text_to_score(&[msg("assistant", "x"), msg("user", "  ")]),
            ""
        );
        assert_eq!(
            text_to_score(&[msg("system", "only system")]),
            "only system"
        );
    }
}
