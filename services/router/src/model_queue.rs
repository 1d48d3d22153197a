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
//!
//! With a time budget (`batching.model_budget`), a text whose pass could
//! not finish within it — the tokens already waiting plus its own, at the
//! model's measured time per token — is not queued: the caller decides it
//! with the first stage instead, so routing delay stays bounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot, Mutex};
use triage_complexity::scorer::{EmbeddingScore, Prepared, Scorer};

/// What became of a queued text.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Scored (`None` when a rule fired: no score needed).
    Scored(Option<EmbeddingScore>),
    /// Its pass would not finish within the budget; it was not queued.
    OverBudget,
    /// Why it could not be scored.
    Failed(String),
}

struct Job {
    text: Arc<Prepared>,
    tokens: usize,
    reply: oneshot::Sender<Outcome>,
}

type Jobs = Arc<Mutex<mpsc::UnboundedReceiver<Job>>>;

/// Hands texts to the model workers. Cheap to clone; the workers stop when
/// the last clone is dropped. The queue holds at most what the batches in
/// flight submitted (`batching.concurrency` × `max_batch`), so it needs no
/// bound of its own.
#[derive(Clone)]
pub struct ModelQueue {
    jobs: mpsc::UnboundedSender<Job>,
    load: Arc<Load>,
}

impl ModelQueue {
    /// Starts `workers` model workers (one pass each at a time) on the
    /// current tokio runtime; each pass takes at most `max_batch` texts,
    /// and its size is observed in `pass_sizes`. With a `budget`, texts
    /// that could not be scored within it are refused ([`Outcome::OverBudget`]).
    pub fn start(
        scorer: Arc<Scorer>,
        workers: usize,
        max_batch: usize,
        pass_sizes: Histogram,
        budget: Option<Duration>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx: Jobs = Arc::new(Mutex::new(rx));
        let load = Arc::new(Load::new(budget));
        for _ in 0..workers.max(1) {
            let worker = Worker {
                scorer: Arc::clone(&scorer),
                jobs: Arc::clone(&rx),
                max_batch: max_batch.max(1),
                pass_sizes: pass_sizes.clone(),
                load: Arc::clone(&load),
            };
            tokio::spawn(worker.run());
        }
        Self { jobs: tx, load }
    }

    /// Queues `texts` (those within the budget) and waits for their
    /// outcomes, in order. A dropped future leaves its texts to be skipped
    /// by the worker if not started.
    pub async fn score(&self, texts: Vec<Arc<Prepared>>) -> Vec<Outcome> {
        let waiting: Vec<Option<oneshot::Receiver<Outcome>>> = texts
            .into_iter()
            .map(|text| {
                let tokens = text.tokens.ids.len();
                if !self.load.admit(tokens) {
                    return None;
                }
                let (reply, rx) = oneshot::channel();
                // A closed queue drops the job; its receiver then says so.
                let _ = self.jobs.send(Job {
                    text,
                    tokens,
                    reply,
                });
                Some(rx)
            })
            .collect();
        futures::future::join_all(waiting.into_iter().map(|rx| async {
            match rx {
                None => Outcome::OverBudget,
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Outcome::Failed("scoring panicked".into())),
            }
        }))
        .await
    }
}

/// The work queued and the model's speed, for the budget.
#[derive(Debug)]
pub struct Load {
    budget: Option<Duration>,
    /// Tokens queued or in a pass.
    backlog: AtomicUsize,
    cost: std::sync::Mutex<PassCost>,
}

impl Load {
    /// No work and no speed known yet.
    pub fn new(budget: Option<Duration>) -> Self {
        Self {
            budget,
            backlog: AtomicUsize::new(0),
            cost: std::sync::Mutex::new(PassCost::default()),
        }
    }

    /// Whether a text of `tokens` can be scored within the budget, and if
    /// so counts it in the backlog. Until a pass was timed, everything is.
    pub fn admit(&self, tokens: usize) -> bool {
        if let Some(budget) = self.budget {
            let ahead = self.backlog.load(Ordering::Relaxed);
            let expected = self.cost.lock().map_or(None, |c| c.predict(ahead + tokens));
            if expected.is_some_and(|e| e > budget) {
                return false;
            }
        }
        self.backlog.fetch_add(tokens, Ordering::Relaxed);
        true
    }

    /// A pass of `tokens` took `elapsed`: out of the backlog, into the
    /// cost model.
    pub fn passed(&self, tokens: usize, elapsed: Duration) {
        self.backlog.fetch_sub(tokens, Ordering::Relaxed);
        if let Ok(mut cost) = self.cost.lock() {
            cost.observe(tokens, elapsed);
        }
    }

    /// Tokens queued but never passed (their caller gave up).
    pub fn forget(&self, tokens: usize) {
        self.backlog.fetch_sub(tokens, Ordering::Relaxed);
    }

    /// Tokens queued or in a pass.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

/// A pass's time as a fixed part plus a part per token, fitted by least
/// squares over recent passes (each pass weighs 0.9 of the one after it).
/// A time per token alone would charge small passes' fixed cost to every
/// token and refuse texts the model has time for.
#[derive(Debug, Default, Clone)]
pub struct PassCost {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

impl PassCost {
    const DECAY: f64 = 0.9;

    /// A pass of `tokens` took `elapsed`.
    pub fn observe(&mut self, tokens: usize, elapsed: Duration) {
        let (x, y) = (tokens as f64, elapsed.as_secs_f64());
        for sum in [
            &mut self.w,
            &mut self.x,
            &mut self.y,
            &mut self.xx,
            &mut self.xy,
        ] {
            *sum *= Self::DECAY;
        }
        self.w += 1.0;
        self.x += x;
        self.y += y;
        self.xx += x * x;
        self.xy += x * y;
    }

    /// The expected time of a pass of `tokens`; `None` before any pass.
    pub fn predict(&self, tokens: usize) -> Option<Duration> {
        if self.w == 0.0 {
            return None;
        }
        let (mx, my) = (self.x / self.w, self.y / self.w);
        let var = self.xx / self.w - mx * mx;
        let cov = self.xy / self.w - mx * my;
        // Passes of (nearly) one size, or a fit that makes no sense: the
        // mean time per token.
        let (fixed, per_token) = if var > 1.0 && cov > 0.0 {
            let b = cov / var;
            ((my - b * mx).max(0.0), b)
        } else {
            (0.0, my / mx.max(1.0))
        };
        Some(Duration::from_secs_f64(fixed + per_token * tokens as f64))
    }
}

/// One model worker.
struct Worker {
    scorer: Arc<Scorer>,
    jobs: Jobs,
    max_batch: usize,
    pass_sizes: Histogram,
    load: Arc<Load>,
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
            let (gone, kept): (Vec<Job>, Vec<Job>) =
                batch.drain(..).partition(|job| job.reply.is_closed());
            self.load.forget(gone.iter().map(|j| j.tokens).sum());
            if !kept.is_empty() {
                return Some(kept);
            }
        }
    }

    async fn answer(&self, batch: Vec<Job>) {
        self.pass_sizes.observe(batch.len() as f64);
        let tokens: usize = batch.iter().map(|j| j.tokens).sum();
        let texts: Vec<Arc<Prepared>> = batch.iter().map(|j| Arc::clone(&j.text)).collect();
        let scorer = Arc::clone(&self.scorer);
        let started = Instant::now();
        let outcomes = match tokio::task::spawn_blocking(move || pass(&scorer, &texts)).await {
            Ok(outcomes) => outcomes,
            Err(join) => {
                let why = if join.is_panic() {
                    "scoring panicked".to_string()
                } else {
                    format!("scoring task: {join}")
                };
                batch.iter().map(|_| Outcome::Failed(why.clone())).collect()
            }
        };
        self.load.passed(tokens, started.elapsed());
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}

/// One model pass over `texts`.
fn pass(scorer: &Scorer, texts: &[Arc<Prepared>]) -> Vec<Outcome> {
    let refs: Vec<&Prepared> = texts.iter().map(|p| p.as_ref()).collect();
    match scorer.embedding_scores(&refs) {
        Err(e) => texts
            .iter()
            .map(|_| Outcome::Failed(format!("embedding: {e}")))
            .collect(),
        Ok(scores) => scores.into_iter().map(Outcome::Scored).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_admitted_until_a_pass_was_timed_or_without_a_budget() {
        let load = Load::new(Some(Duration::from_millis(50)));
        assert!(load.admit(100_000));
        assert_eq!(load.backlog(), 100_000);
        let free = Load::new(None);
        free.passed(0, Duration::from_secs(1));
        assert!(free.admit(100_000));
    }

    #[test]
    fn a_text_is_refused_when_the_backlog_and_itself_would_overrun_the_budget() {
        let load = Load::new(Some(Duration::from_millis(50)));
        assert!(load.admit(100) && load.admit(400), "no pass timed yet");
        load.passed(100, Duration::from_millis(15));
        load.passed(400, Duration::from_millis(45)); // 5 ms + 0.1 ms a token
        assert_eq!(load.backlog(), 0);
        assert!(load.admit(400), "45 ms alone");
        assert!(load.admit(40), "49 ms with the 400 ahead");
        assert!(!load.admit(20), "51 ms");
        assert_eq!(load.backlog(), 440, "a refused text is not counted");
        load.forget(440);
        assert!(!load.admit(460), "one text alone can overrun it");
        assert!(load.admit(440));
    }

    #[test]
    fn the_cost_is_a_fixed_part_and_a_part_per_token_from_recent_passes() {
        let mut cost = PassCost::default();
        assert_eq!(cost.predict(10), None);
        cost.observe(100, Duration::from_millis(15));
        // One size seen: the mean time per token.
        assert_eq!(cost.predict(200), Some(Duration::from_millis(30)));
        cost.observe(400, Duration::from_millis(45));
        let ms = |c: &PassCost, t| c.predict(t).unwrap().as_secs_f64() * 1e3;
        assert!((ms(&cost, 300) - 35.0).abs() < 1e-6, "{}", ms(&cost, 300));
        // The model got twice as slow: recent passes soon dominate.
        for _ in 0..60 {
            cost.observe(100, Duration::from_millis(30));
            cost.observe(400, Duration::from_millis(90));
        }
        assert!((ms(&cost, 300) - 70.0).abs() < 0.1, "{}", ms(&cost, 300));
    }
}
