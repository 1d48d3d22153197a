//! The model queue: every text that needs the transformer waits here, and
//! a model worker takes everything waiting (up to `max_batch`) the moment
//! it is free — continuous batching, as text-embeddings-inference does.
//!
//! Before, each pulled micro-batch made its own model pass and passes
//! queued behind one another: under load most were of one or two texts,
//! so the model ran at its batch-1 rate and the queue grew (p50 routing
//! delay 74 ms for short prompts at half the batched throughput). Now a
//! pass takes what queued during the previous one, so passes grow with
//! the load instead of the queue.

use std::sync::Arc;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot, Mutex};
use triage_complexity::scorer::{EmbeddingScore, Prepared, Scorer};

/// A text's outcome: prepared (truncated, rules checked) with its
/// embedding score, or why it could not be scored.
pub type Scored = Result<(Prepared, Option<EmbeddingScore>), String>;

struct Job {
    text: String,
    reply: oneshot::Sender<Scored>,
}

type Jobs = Arc<Mutex<mpsc::UnboundedReceiver<Job>>>;

/// Hands texts to the model workers. Cheap to clone; the workers stop when
/// the last clone is dropped. The queue holds at most what the batches in
/// flight submitted (`batching.concurrency` × `max_batch`), so it needs no
/// bound of its own.
#[derive(Clone)]
pub struct ModelQueue {
    jobs: mpsc::UnboundedSender<Job>,
}

impl ModelQueue {
    /// Starts `workers` model workers (one pass each at a time) on the
    /// current tokio runtime; each pass takes at most `max_batch` texts,
    /// and its size is observed in `pass_sizes`.
    pub fn start(
        scorer: Arc<Scorer>,
        workers: usize,
        max_batch: usize,
        pass_sizes: Histogram,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx: Jobs = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            let worker = Worker {
                scorer: Arc::clone(&scorer),
                jobs: Arc::clone(&rx),
                max_batch: max_batch.max(1),
                pass_sizes: pass_sizes.clone(),
            };
            tokio::spawn(worker.run());
        }
        Self { jobs: tx }
    }

    /// Queues `texts` and waits for their outcomes, in order. A dropped
    /// future leaves its texts to be skipped by the worker if not started.
    pub async fn score(&self, texts: Vec<String>) -> Vec<Scored> {
        let waiting: Vec<oneshot::Receiver<Scored>> = texts
            .into_iter()
            .map(|text| {
                let (reply, rx) = oneshot::channel();
                // A closed queue drops the job; its receiver then says so.
                let _ = self.jobs.send(Job { text, reply });
                rx
            })
            .collect();
        futures::future::join_all(waiting.into_iter().map(|rx| async {
            rx.await
                .unwrap_or_else(|_| Err("scoring panicked".to_string()))
        }))
        .await
    }
}

/// One model worker.
struct Worker {
    scorer: Arc<Scorer>,
    jobs: Jobs,
    max_batch: usize,
    pass_sizes: Histogram,
}

impl Worker {
    /// Waits for a text, takes whatever else is already waiting, scores
    /// them in one pass off the async threads, answers each; until the
    /// queue closes.
    async fn run(self) {
        while let Some(batch) = self.next_batch().await {
            self.answer(batch).await;
        }
    }

    async fn next_batch(&self) -> Option<Vec<Job>> {
        loop {
            let mut batch = {
                let mut rx = self.jobs.lock().await;
                let first = rx.recv().await?;
                let mut batch = vec![first];
                while batch.len() < self.max_batch {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                batch
            };
            // Texts whose caller gave up (score timeout) are not worth a pass.
            batch.retain(|job| !job.reply.is_closed());
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }

    async fn answer(&self, mut batch: Vec<Job>) {
        self.pass_sizes.observe(batch.len() as f64);
        let texts: Vec<String> = batch.iter_mut().map(|j| std::mem::take(&mut j.text)).collect();
        let scorer = Arc::clone(&self.scorer);
        let outcomes = match tokio::task::spawn_blocking(move || pass(&scorer, &texts)).await {
            Ok(outcomes) => outcomes,
            Err(join) => {
                let why = if join.is_panic() {
                    "scoring panicked".to_string()
                } else {
                    format!("scoring task: {join}")
                };
                batch.iter().map(|_| Err(why.clone())).collect()
            }
        };
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}

/// Truncation, rules and one model pass over `texts`.
fn pass(scorer: &Scorer, texts: &[String]) -> Vec<Scored> {
    let prepared: Vec<Result<Prepared, String>> = texts
        .iter()
        .map(|t| scorer.prepare(t).map_err(|e| format!("truncation: {e}")))
        .collect();
    let ok: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    match scorer.embedding_scores(&ok) {
        Err(e) => texts.iter().map(|_| Err(format!("embedding: {e}"))).collect(),
        Ok(scores) => {
            let mut scores = scores.into_iter();
            prepared
                .into_iter()
                .map(|p| p.map(|p| (p, scores.next().flatten())))
                .collect()
        }
    }
}
