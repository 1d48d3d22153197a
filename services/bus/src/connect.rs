//! Connecting to NATS.

use crate::{BusError, NatsConfig};

/// Connects with the configured credentials. Retries the initial connection
/// so a service started before NATS waits for it instead of exiting.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, BusError> {
    let mut options = async_nats::ConnectOptions::new().retry_on_initial_connect();
    if let Some(name) = &config.name {
        options = options.name(name);
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| BusError::Config(format!("cannot read creds file {path}: {e}")))?;
    }
    let urls: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            BusError::Config(format!("invalid NATS URL {:?}: {e}", mask_url(&config.url)))
        })?;
    // retry_on_initial_connect returns at once; wait for the first connection
    // so callers fail loudly on a wrong URL rather than hanging later.
    let client = options
        .connect(urls)
        .await
        .map_err(|source| BusError::Connect {
            url: mask_url(&config.url),
            source,
        })?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(BusError::Config(format!(
                "no connection to NATS at {} after 30 s",
                mask_url(&config.url)
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(client)
}

/// A URL with any embedded password replaced by `***`.
pub fn mask_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let creds = &u[scheme + 3..at];
                match creds.find(':') {
                    Some(colon) => {
                        format!("{}{}:***{}", &u[..scheme + 3], &creds[..colon], &u[at..])
                    }
                    None => format!("{}***{}", &u[..scheme + 3], &u[at..]),
                }
            }
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(mask_url("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(mask_url("nats://token@h"), "nats://***@h");
        assert_eq!(
            mask_url("nats://h:4222,nats://a:b@g"),
            "nats://h:4222,nats://a:***@g"
        );
    }
}
