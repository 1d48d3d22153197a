//! Secrets masked wherever a URL is printed: one function for NATS server
//! lists, database URLs and anything else a service logs or shows.
//!
//! `scheme://user:password@host` → `scheme://user:***@host`;
//! `nats://token@host` → `nats://***@host` (NATS token auth; for other
//! schemes, such as `postgres://user@host`, a lone name is a user name and
//! is kept);
//! a comma-separated list is masked element by element; query parameters
//! whose name says secret (`password=`, `sslpassword=`, `token=`, …) keep
//! their name and lose their value. Text that is not a URL is unchanged.

/// Words that mark a query parameter (or a configuration key) as a secret.
pub const SECRET_WORDS: [&str; 6] = ["password", "secret", "token", "api_key", "apikey", "creds"];

/// `url` with every embedded credential replaced by `***`.
pub fn mask_url(url: &str) -> String {
    url.split(',').map(mask_one).collect::<Vec<_>>().join(",")
}

/// Free text (an HTTP client's error chain, say) with every URL in it
/// masked as [`mask_url`] does; the rest is unchanged.
pub fn mask_urls_in(text: &str) -> String {
    let delimiter = |c: char| c.is_whitespace() || matches!(c, '(' | ')' | '"' | '\'' | '<' | '>');
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") {
            out.push_str(&mask_url(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if delimiter(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn mask_one(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        // Without a scheme only `user:pass@host` is recognisably a URL.
        None if url.contains('@') && !url.contains(char::is_whitespace) => ("", url),
        None => return url.to_string(),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (credentials, host) = authority.split_at(at);
            match credentials.find(':') {
                Some(colon) => format!("{}:***{host}", &credentials[..colon]),
                None if token_auth(scheme) => format!("***{host}"),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    format!("{scheme}{authority}{}", mask_query(tail))
}

/// Whether a lone `name@` before the host is a secret: NATS URLs (and bare
/// NATS host lists) carry a token there; other schemes a user name.
fn token_auth(scheme: &str) -> bool {
    matches!(
        scheme.trim_end_matches("://").to_ascii_lowercase().as_str(),
        "" | "nats" | "tls" | "ws" | "wss"
    )
}

/// Masks the values of secret-named parameters in `?a=b&c=d` (the part of
/// the URL after its authority; the path and fragment are kept).
fn mask_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_string();
    };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((name, value)) if is_secret_name(name) && !value.is_empty() => {
                format!("{name}=***")
            }
            _ => p.to_string(),
        })
        .collect();
    format!("{path}{}{fragment}", params.join("&"))
}

/// Whether a key or parameter name names a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| name.contains(w))
}

#[cfg(test)]
mod tests {
    use super::{mask_url, mask_urls_in};

    #[test]
    fn urls_inside_text_are_masked_and_the_rest_kept() {
        let text =
            "error sending request for url (http://svc:hunter2@vllm:8000/v1/chat/completions): \
                    connection refused; retry \"nats://tok@n1:4222\" later";
        let masked = mask_urls_in(text);
        assert!(
            !masked.contains("hunter2") && !masked.contains("tok@"),
            "{masked}"
        );
        assert!(
            masked.contains("(http://svc:***@vllm:8000/v1/chat/completions)"),
            "{masked}"
        );
        assert!(
            masked.contains("connection refused; retry \"nats://***@n1:4222\" later"),
            "{masked}"
        );
        assert_eq!(mask_urls_in("no url here: a@b"), "no url here: a@b");
    }

    #[test]
    fn user_passwords_and_tokens_are_masked() {
        assert_eq!(mask_url("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(mask_url("nats://s3cr3t-token@h:4222"), "nats://***@h:4222");
        assert_eq!(mask_url("tls://u:p%40ss@h"), "tls://u:***@h");
        // A password containing '@' is cut at the last one.
        assert_eq!(mask_url("nats://u:p@ss@h"), "nats://u:***@h");
    }

    #[test]
    fn every_url_of_a_list_is_masked() {
        assert_eq!(
            mask_url("nats://a:1@n1:4222,nats://tok@n2:4222,nats://n3:4222"),
            "nats://a:***@n1:4222,nats://***@n2:4222,nats://n3:4222"
        );
        // NATS accepts bare host lists too.
        assert_eq!(mask_url("a:1@n1:4222,n2:4222"), "a:***@n1:4222,n2:4222");
    }

    #[test]
    fn database_urls_lose_passwords_in_authority_and_query() {
        assert_eq!(
            mask_url("postgres://triage:hunter2@db:5432/triage?sslmode=require"),
            "postgres://triage:***@db:5432/triage?sslmode=require"
        );
        assert_eq!(
            mask_url("postgres://db/triage?user=t&password=hunter2&sslpassword=k#frag"),
            "postgres://db/triage?user=t&password=***&sslpassword=***#frag"
        );
    }

    #[test]
    fn text_without_credentials_is_unchanged() {
        for s in [
            "nats://127.0.0.1:4222",
            // A user name alone is not a secret outside NATS.
            "postgres://postgres@127.0.0.1:5432/triage",
            "plain text, not a url",
            "",
            "http://h/p?q=1",
        ] {
            assert_eq!(mask_url(s), s);
        }
    }
}
