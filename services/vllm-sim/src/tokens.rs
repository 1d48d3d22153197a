//! Token counting by a documented approximation (no real tokenizer).
//!
//! Rule: a run of letters/digits (`char::is_alphanumeric`) of `L` characters counts
//! `1 + (L - 1) / 7` tokens (so words up to 7 characters are one token, like common English
//! words in BPE vocabularies); every other non-whitespace character counts one token;
//! whitespace is free (it is merged into the following token, as BPE does with leading spaces).
//! A chat prompt adds 3 tokens per message (role and separators) and 3 for the assistant
//! header, like OpenAI's published counting recipe.
//!
//! The simulator's generated tokens are words of at most 7 letters or single punctuation
//! marks, each with its leading space, so counting the generated text gives exactly the
//! reported `completion_tokens`.

/// Tokens in `text` under the approximation above.
pub fn count_tokens(text: &str) -> u32 {
    let mut tokens = 0u32;
    let mut run = 0u32;
    for c in text.chars() {
        if c.is_alphanumeric() {
            run += 1;
            continue;
        }
        if run > 0 {
            tokens += 1 + (run - 1) / 7;
            run = 0;
        }
        if !c.is_whitespace() {
            tokens += 1;
        }
    }
    if run > 0 {
        tokens += 1 + (run - 1) / 7;
    }
    tokens
}

/// Tokens a chat prompt costs: the contents plus the chat template's overhead.
pub fn count_chat_tokens<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> u32 {
    let mut total = 3; // assistant header the template appends
    for (role, content) in messages {
        total += 3 + count_tokens(role) + count_tokens(content);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_punctuation_and_long_words() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(count_tokens("hello, world!"), 4);
        assert_eq!(count_tokens("   spaced   out  "), 2);
        // 15 letters: 1 + 14/7 = 3
        assert_eq!(count_tokens("international"), 2);
        assert_eq!(count_tokens("internationally"), 3);
        assert_eq!(count_tokens("a1b2"), 1);
    }

    #[test]
    fn chat_overhead() {
        assert_eq!(count_chat_tokens([("user", "hi")]), 3 + 3 + 1 + 1);
    }
}
