//! `record`: captures what arrives on `llm.requests` (and the tenants'
//! `llm.requests.<tenant>`) into a trace that
//! `run --mode trace` replays at the recorded inter-arrival times.
//!
//! It listens with a plain subscription, so it sees every request without
//! taking any from the router's work queue. The trace holds prompts: treat
//! it like the traffic it came from.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use triage_protocol::{decode, headers, Encoding, Namespace, Request};

/// Records until `limit` requests, `duration`, or `cancel`. Returns how
/// many were written and how many could not be decoded.
pub async fn record(
    client: &async_nats::Client,
    ns: &Namespace,
    output: &Path,
    limit: Option<usize>,
    duration: Option<Duration>,
    cancel: &CancellationToken,
) -> anyhow::Result<(usize, usize)> {
    let plain = client.subscribe(ns.requests()).await?;
    let tenants = client.subscribe(format!("{}.>", ns.requests())).await?;
    let mut sub = futures::stream::select(plain, tenants);
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let (mut written, mut undecodable) = (0, 0);
    loop {
        if limit.is_some_and(|l| written >= l) {
            break;
        }
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, sub.next()).await.ok().flatten(),
                None => sub.next().await,
            }
        };
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            m = next => match m { Some(m) => m, None => break },
        };
        let encoding = Encoding::from_content_type(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::CONTENT_TYPE))
                .map(|v| v.as_str()),
        );
        let Ok(request) = decode::<Request>(encoding, &message.payload) else {
            undecodable += 1;
            continue;
        };
        let line = serde_json::json!({
            "id": request.id,
            "messages": request.chat_messages(),
            "max_tokens": request.max_tokens,
            // The router's rule: the subject's tenant, else the body's.
            "tenant": ns.subject_tenant(&message.subject).ok().flatten().or(request.tenant.as_deref()),
            "timestamp_ms": triage_protocol::now_ms(),
        });
        writeln!(out, "{line}")?;
        out.flush()?;
        written += 1;
    }
    Ok((written, undecodable))
}
