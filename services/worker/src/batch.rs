//! The `batch` command: submit a JSONL file of requests with `keep_result`,
//! collect their final replies from the results stream, and write a JSONL
//! file of results — resumable after any interruption.
//!
//! Idempotency comes from the request ids: an id already in the output file
//! is skipped; an id whose result is already on `llm.results.<id>` is
//! written without being submitted again; a submission carries the message
//! id `batch:<id>`, so JetStream drops a repeat within its duplicate window.
//! Results arrive on an inbox (fast path) and are also looked up by subject
//! in the results stream (durable path: nothing is missed if a reply is).
//!
//! Parsing the input and reading back a partial output are pure functions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;
use triage_bus::{envelope, publish};
use triage_protocol::{
    decode, encode, headers, Encoding, Namespace, Reply, Request, RequestKey, RoutedRequest,
    RoutingDecision, StreamKind, Tier,
};

/// Where requests are submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubmitTo {
    /// `llm.requests`: through the router (the normal path).
    Requests,
    /// `llm.tier1` directly, as a routed request (bypasses the router).
    Tier1,
    /// `llm.tier2` directly, as a routed request (bypasses the router).
    Tier2,
}

/// What to do.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// JSONL of requests.
    pub input: PathBuf,
    /// JSONL of results (appended to; created if missing).
    pub output: PathBuf,
    /// Where to submit.
    pub submit_to: SubmitTo,
    /// Requests submitted and not yet answered, at most.
    pub window: usize,
    /// Give up waiting after this long (a later run resumes).
    pub timeout: Duration,
    /// How often unanswered requests are looked up in the results stream.
    pub poll_interval: Duration,
    /// Encoding of submitted requests.
    pub encoding: Encoding,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Requests in the input.
    pub total: usize,
    /// Already in the output file before this run.
    pub already_written: usize,
    /// Found in the results stream without submitting.
    pub recovered: usize,
    /// Submitted in this run.
    pub submitted: usize,
    /// Results written in this run that are completions.
    pub completed: usize,
    /// Results written in this run that are errors.
    pub errors: usize,
    /// Ids still without a result when the run stopped.
    pub missing: Vec<String>,
}

/// Why a batch could not run.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// An input line is not a request.
    #[error("{path}:{line}: {reason}")]
    Input {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// NATS failed.
    #[error("NATS: {0}")]
    Nats(String),
}

/// Parses JSONL requests: one JSON object per line with the request's
/// fields (`id`, `prompt` or `messages`, `max_tokens`, …); blank lines are
/// skipped. Every request must have a distinct, non-empty `id`.
pub fn parse_input(text: &str) -> Result<Vec<Request>, (usize, String)> {
    let mut seen = HashSet::new();
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let request: Request =
            decode(Encoding::Json, line.as_bytes()).map_err(|e| (n, e.to_string()))?;
        if request.id.trim().is_empty() {
            return Err((
                n,
                "missing `id`: batch requests need ids, which make resubmission idempotent".into(),
            ));
        }
        if let Err(e) = triage_protocol::check_request_id(&request.id) {
            return Err((n, e.to_string()));
        }
        if request.chat_messages().is_empty() {
            return Err((n, "neither `prompt` nor `messages` is set".into()));
        }
        if !seen.insert(request.id.clone()) {
            return Err((n, format!("duplicate id {:?}", request.id)));
        }
        requests.push(request);
    }
    Ok(requests)
}

/// Reads back an output file: the ids of its complete result lines, and the
/// length of the valid prefix (an interrupted write leaves a partial last
/// line, which is cut off before appending).
pub fn written_ids(text: &str) -> (HashSet<String>, usize) {
    let mut ids = HashSet::new();
    let mut valid = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        offset += line.len();
        if !line.ends_with('\n') {
            break;
        }
        let id = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
        match id {
            Some(id) => {
                ids.insert(id);
                valid = offset;
            }
            None if line.trim().is_empty() => valid = offset,
            None => break,
        }
    }
    (ids, valid)
}

/// The id of a final reply, if it is one.
fn final_id(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::Completion(c) => Some(&c.id),
        Reply::Error(e) => Some(&e.id),
        Reply::Chunk(_) => None,
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |source| BatchError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn nats<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> BatchError + '_ {
    move |e| BatchError::Nats(format!("{what}: {e}"))
}

/// The results file, opened for appending.
struct Output {
    file: std::fs::File,
    path: PathBuf,
}

impl Output {
    /// Opens (or creates) `path`, cutting off a partial last line left by an
    /// interrupted run; returns it with the ids already written.
    fn open(path: &Path) -> Result<(Self, HashSet<String>), BatchError> {
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(path)(e)),
        };
        let (written, valid_len) = written_ids(&existing);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        if valid_len < existing.len() {
            tracing::warn!(
                bytes = existing.len() - valid_len,
                "cutting off a partial last line left by an interrupted run"
            );
            file.set_len(valid_len as u64).map_err(io_err(path))?;
        }
        let path = path.to_path_buf();
        Ok((Self { file, path }, written))
    }

    fn write(&mut self, reply: &Reply) -> Result<(), BatchError> {
        let mut line = serde_json::to_vec(reply).expect("a reply serialises to JSON");
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_err(&self.path))
    }
}

/// Runs a batch until every request has a result, `options.timeout`
/// passes, or `shutdown` fires (a later run resumes either way).
pub async fn run(
    client: &async_nats::Client,
    ns: &Namespace,
    options: &BatchOptions,
    shutdown: &CancellationToken,
) -> Result<BatchReport, BatchError> {
    let input = std::fs::read_to_string(&options.input).map_err(io_err(&options.input))?;
    let requests = parse_input(&input).map_err(|(line, reason)| BatchError::Input {
        path: options.input.display().to_string(),
        line,
        reason,
    })?;
    let (out, written) = Output::open(&options.output)?;
    let js = jetstream::new(client.clone());
    let results = js
        .get_stream(ns.stream_name(StreamKind::Results))
        .await
        .map_err(nats("look up the results stream"))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(nats("subscribe to the reply inbox"))?;
    let mut report = BatchReport {
        total: requests.len(),
        ..BatchReport::default()
    };
    let bar = progress_bar(options.progress, requests.len() as u64);
    let mut todo = VecDeque::new();
    for r in requests {
        if written.contains(&r.id) {
            report.already_written += 1;
        } else {
            todo.push_back(r);
        }
    }
    bar.set_position(report.already_written as u64);
    let mut batch = Batch {
        js,
        results,
        ns,
        options,
        inbox,
        out,
        report,
        bar,
        todo,
        outstanding: HashMap::new(),
    };

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut poll = tokio::time::interval(options.poll_interval.max(Duration::from_millis(10)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        batch.fill_window(shutdown).await?;
        if batch.outstanding.is_empty() && (batch.todo.is_empty() || shutdown.is_cancelled()) {
            break;
        }
        tokio::select! {
            m = replies.next() => {
                let Some(m) = m else { break };
                batch.on_reply(&m)?;
            }
            _ = poll.tick() => batch.look_up_due().await?,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(timeout = ?options.timeout, "batch timed out; run again to resume");
                break;
            }
            // Stop submitting and waiting: a later run resumes.
            _ = shutdown.cancelled() => break,
        }
    }
    batch.finish(started)
}

/// One run's state: what is left to submit, what awaits its result, and
/// where results go.
struct Batch<'a> {
    js: jetstream::Context,
    results: jetstream::stream::Stream,
    ns: &'a Namespace,
    options: &'a BatchOptions,
    inbox: String,
    out: Output,
    report: BatchReport,
    bar: ProgressBar,
    todo: VecDeque<Request>,
    /// Submitted and awaited: id → (tenant, when submitted).
    outstanding: HashMap<String, (Option<String>, Instant)>,
}

impl Batch<'_> {
    /// Fills the window: recovers what is already kept, submits the rest.
    async fn fill_window(&mut self, shutdown: &CancellationToken) -> Result<(), BatchError> {
        while self.outstanding.len() < self.options.window.max(1) && !shutdown.is_cancelled() {
            let Some(request) = self.todo.pop_front() else {
                break;
            };
            if let Some(reply) = self.lookup(RequestKey::of(&request)).await? {
                self.report.recovered += 1;
                self.record(&reply)?;
                continue;
            }
            submit(
                &self.js,
                self.ns,
                self.options,
                &self.inbox,
                request.clone(),
            )
            .await?;
            self.report.submitted += 1;
            self.outstanding
                .insert(request.id, (request.tenant, Instant::now()));
        }
        Ok(())
    }

    /// A message on the inbox: recorded if it is the final reply of a
    /// request still awaited.
    fn on_reply(&mut self, m: &async_nats::Message) -> Result<(), BatchError> {
        let encoding = Encoding::from_content_type(
            m.headers
                .as_ref()
                .and_then(|h| h.get(headers::CONTENT_TYPE))
                .map(|v| v.as_str()),
        );
        if let Ok(reply) = decode::<Reply>(encoding, &m.payload) {
            if let Some(id) = final_id(&reply) {
                if self.outstanding.remove(id).is_some() {
                    self.record(&reply)?;
                }
            }
        }
        Ok(())
    }

    /// Looks up, in the results stream, the requests awaited longer than
    /// the poll interval (the durable path: a lost reply is found here).
    async fn look_up_due(&mut self) -> Result<(), BatchError> {
        let due: Vec<(String, Option<String>)> = self
            .outstanding
            .iter()
            .filter(|(_, (_, at))| at.elapsed() >= self.options.poll_interval)
            .map(|(id, (tenant, _))| (id.clone(), tenant.clone()))
            .collect();
        for (id, tenant) in due {
            if let Some(reply) = self.lookup(RequestKey::new(tenant.as_deref(), &id)).await? {
                self.outstanding.remove(&id);
                self.record(&reply)?;
            }
        }
        Ok(())
    }

    /// The kept result of the request, if the results stream has one.
    async fn lookup(&self, key: RequestKey<'_>) -> Result<Option<Reply>, BatchError> {
        let subject = self.ns.result(key);
        match self.results.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let encoding = Encoding::from_content_type(
                    m.headers.get(headers::CONTENT_TYPE).map(|v| v.as_str()),
                );
                decode::<Reply>(encoding, &m.payload)
                    .map(Some)
                    .map_err(|e| BatchError::Nats(format!("undecodable result {subject}: {e}")))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(BatchError::Nats(format!("look up {subject}: {e}"))),
        }
    }

    /// Writes a result and counts it.
    fn record(&mut self, reply: &Reply) -> Result<(), BatchError> {
        match reply {
            Reply::Completion(_) => self.report.completed += 1,
            _ => self.report.errors += 1,
        }
        self.bar.inc(1);
        self.bar.set_message(format!(
            "{} ok, {} errors",
            self.report.completed, self.report.errors
        ));
        self.out.write(reply)
    }

    /// Syncs the output and reports what is still missing.
    fn finish(self, started: Instant) -> Result<BatchReport, BatchError> {
        self.out
            .file
            .sync_all()
            .map_err(io_err(&self.options.output))?;
        let mut report = self.report;
        report.missing = self
            .outstanding
            .into_keys()
            .chain(self.todo.into_iter().map(|r| r.id))
            .collect();
        report.missing.sort();
        self.bar.finish_with_message(format!(
            "{} ok, {} errors, {} missing in {:.1?}",
            report.completed,
            report.errors,
            report.missing.len(),
            started.elapsed()
        ));
        Ok(report)
    }
}

async fn submit(
    js: &jetstream::Context,
    ns: &Namespace,
    options: &BatchOptions,
    inbox: &str,
    mut request: Request,
) -> Result<(), BatchError> {
    request.keep_result = true;
    request.stream = false;
    request.reply_to = Some(inbox.to_string());
    if request.submitted_at_ms.is_none() {
        request.submitted_at_ms = Some(triage_protocol::now_ms());
    }
    let msg_id = RequestKey::of(&request).msg_id("batch");
    let mut h = envelope::outgoing(options.encoding, Some(&msg_id));
    h.insert(headers::REPLY_TO, inbox);
    let (subject, payload) = match options.submit_to {
        SubmitTo::Requests => (ns.requests(), encode(options.encoding, &request)),
        SubmitTo::Tier1 | SubmitTo::Tier2 => {
            let tier = if options.submit_to == SubmitTo::Tier1 {
                Tier::Small
            } else {
                Tier::Large
            };
            let routed = RoutedRequest {
                version: triage_protocol::SCHEMA_VERSION,
                request,
                routing: RoutingDecision::fixed(tier, "batch_direct_to_tier"),
                routed_at_ms: triage_protocol::now_ms(),
            };
            (ns.tier(tier), encode(options.encoding, &routed))
        }
    };
    // Retried: the message id makes a repeat a no-op, and one hiccup should
    // not stop the whole batch.
    publish::durable(js, "batch request", &subject, h, payload.into())
        .await
        .map_err(|e| BatchError::Nats(e.to_string()))
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} ({per_sec}, eta {eta}) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_lines_become_requests_with_ids() {
        let text = r#"{"id":"a","prompt":"hi","max_tokens":5}

{"id":"b","messages":[{"role":"user","content":"yo"}]}
"#;
        let rs = parse_input(text).unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].max_tokens, Some(5));
        assert_eq!(rs[1].chat_messages()[0].content, "yo");
    }

    #[test]
    fn bad_input_lines_are_named() {
        let (line, reason) =
            parse_input("{\"id\":\"a\",\"prompt\":\"x\"}\n{\"prompt\":\"x\"}\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.contains("id"), "{reason}");
        let (line, reason) =
            parse_input("{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"a\",\"prompt\":\"y\"}")
                .unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.contains("duplicate"));
        let (_, reason) =
            parse_input("{\"id\":\"a\",\"max_tokens\":\"many\",\"prompt\":\"x\"}").unwrap_err();
        assert!(reason.contains("max_tokens"), "{reason}");
        let (_, reason) = parse_input("{\"id\":\"a\"}").unwrap_err();
        assert!(reason.contains("prompt"));
        let (line, reason) =
            parse_input("{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"a b\",\"prompt\":\"x\"}")
                .unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.contains("`id`"), "{reason}");
        assert!(parse_input("not json").is_err());
    }

    #[test]
    fn partial_output_is_read_back_and_cut() {
        let text = "{\"type\":\"completion\",\"id\":\"a\"}\n{\"type\":\"error\",\"id\":\"b\"}\n{\"type\":\"compl";
        let (ids, valid) = written_ids(text);
        assert_eq!(ids, HashSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(
            &text[..valid],
            "{\"type\":\"completion\",\"id\":\"a\"}\n{\"type\":\"error\",\"id\":\"b\"}\n"
        );
        let (ids, valid) = written_ids("");
        assert!(ids.is_empty());
        assert_eq!(valid, 0);
        // A complete but garbled line stops the read there.
        let (ids, valid) = written_ids("{\"id\":\"a\"}\ngarbage\n{\"id\":\"c\"}\n");
        assert_eq!(ids.len(), 1);
        assert_eq!(valid, 11);
    }
}
