//! One shadow job: the other tier answers the request, the judge grades
//! both answers (at once), and the three calls are booked on `llm.usage`
//! (each publish awaited). Only then may the caller ack. A failure before
//! the booking books nothing: the redelivery calls again (the spent tokens
//! of the failed delivery go unbooked — at most one job's worth per
//! failure); a failure after a partial booking repeats only message ids
//! already taken.

use async_nats::jetstream;
use bytes::Bytes;
use triage_backend::{BackendClient, BackendError};
use triage_bus::{envelope, publish, BusError};
use triage_protocol::shadow::{JudgedRole, SHADOW_ATTEMPT_BASE};
use triage_protocol::{encode, Encoding, ErrorCode, Namespace, ShadowJob, Tier, UsageEvent};

use crate::booking::{self, Caller, Graded};
use crate::call::{self, Answer, Ask};
use crate::config::{ModelEndpoint, ShadowConfig};
use crate::metrics::ShadowMetrics;
use crate::rubric;

/// Why a job did not go through.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job can never be done (dead-lettered at once).
    #[error("unusable shadow job: {0}")]
    Invalid(String),
    /// A model call failed.
    #[error("{call} call to {url} failed: {source}")]
    Backend {
        /// `shadow` or `judge`.
        call: &'static str,
        /// The server.
        url: String,
        /// The cause (boxed: it is large, and rare).
        source: Box<BackendError>,
    },
    /// A usage event was not taken by JetStream.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl JobError {
    /// Whether a later delivery may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Invalid(_) => false,
            JobError::Backend { source, .. } => source.is_retryable(),
            JobError::Bus(_) => true,
        }
    }

    /// The dead letter's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            JobError::Invalid(_) => ErrorCode::InvalidRequest,
            JobError::Backend { source, .. } if source.is_retryable() => {
                ErrorCode::BackendUnavailable
            }
            JobError::Backend { .. } => ErrorCode::BackendRejected,
            JobError::Bus(_) => ErrorCode::Internal,
        }
    }
}

/// The grades a job came to (`None`: the judge gave no rating).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The client's answer.
    pub answer: Option<f64>,
    /// The shadow answer.
    pub shadow: Option<f64>,
}

/// Does shadow jobs.
pub struct Shadower {
    tier1: (BackendClient, ModelEndpoint),
    tier2: (BackendClient, ModelEndpoint),
    judge: (BackendClient, ModelEndpoint),
    judge_tier: Tier,
    judge_max_tokens: u32,
    store_text: bool,
    js: jetstream::Context,
    ns: Namespace,
    metrics: ShadowMetrics,
}

fn client(e: &ModelEndpoint, config: &ShadowConfig) -> Result<BackendClient, BackendError> {
    BackendClient::new(e.backend(config.call_timeout))
}

impl Shadower {
    /// Clients for the configured servers.
    pub fn new(
        config: &ShadowConfig,
        js: jetstream::Context,
        ns: Namespace,
        metrics: ShadowMetrics,
    ) -> Result<Self, BackendError> {
        let judge = config.judge_endpoint();
        Ok(Self {
            tier1: (client(&config.tier1, config)?, config.tier1.clone()),
            tier2: (client(&config.tier2, config)?, config.tier2.clone()),
            judge: (client(&judge, config)?, judge),
            judge_tier: config.judge.tier,
            judge_max_tokens: config.judge.max_tokens,
            store_text: config.learning.store_text,
            js,
            ns,
            metrics,
        })
    }

    /// Does `job`, booking with `encoding`.
    pub async fn handle(&self, job: &ShadowJob, encoding: Encoding) -> Result<Verdict, JobError> {
        check(job)?;
        let shadow_tier = job.shadow_tier();
        let (client, endpoint) = match shadow_tier {
            Tier::Small => &self.tier1,
            Tier::Large => &self.tier2,
        };
        let shadow = self.generate(job, client, endpoint).await?;
        let (answer_grade, shadow_grade) =
            tokio::join!(self.grade(job, &job.answer), self.grade(job, &shadow.text));
        let (answer_call, answer_score) = answer_grade?;
        let (shadow_call, shadow_score) = shadow_grade?;

        let shadow_by = Caller {
            tier: shadow_tier,
            model: &endpoint.model,
        };
        let judge_by = Caller {
            tier: self.judge_tier,
            model: &self.judge.1.model,
        };
        let answer_by = Caller {
            tier: job.tier,
            model: &job.model,
        };
        let events = [
            booking::shadow(job, shadow_by, &shadow),
            booking::judge(
                job,
                judge_by,
                &answer_call,
                Graded {
                    role: JudgedRole::Answer,
                    by: answer_by,
                    attempt: job.attempt,
                    score: answer_score,
                    text: self.store_text.then_some(job.answer.as_str()),
                },
            ),
            booking::judge(
                job,
                judge_by,
                &shadow_call,
                Graded {
                    role: JudgedRole::Shadow,
                    by: shadow_by,
                    attempt: job.attempts().shadow,
                    score: shadow_score,
                    text: self.store_text.then_some(shadow.text.as_str()),
                },
            ),
        ];
        for event in &events {
            self.book(event, encoding).await?;
        }
        let verdict = Verdict {
            answer: answer_score,
            shadow: shadow_score,
        };
        self.count(job, &events, verdict);
        Ok(verdict)
    }

    async fn generate(
        &self,
        job: &ShadowJob,
        client: &BackendClient,
        endpoint: &ModelEndpoint,
    ) -> Result<Answer, JobError> {
        let r = &job.request;
        let ask = Ask {
            model: &endpoint.model,
            messages: r.chat_messages(),
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            params: Some(&r.params),
        };
        let started = std::time::Instant::now();
        let answer = call::ask(client, &ask)
            .await
            .map_err(|source| JobError::Backend {
                call: "shadow",
                url: endpoint.url.clone(),
                source: Box::new(source),
            })?;
        self.metrics
            .shadow_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(answer)
    }

    /// One judge call on `answer`: the call and the rating read from it.
    async fn grade(
        &self,
        job: &ShadowJob,
        answer: &str,
    ) -> Result<(Answer, Option<f64>), JobError> {
        let (client, endpoint) = &self.judge;
        let ask = Ask {
            model: &endpoint.model,
            messages: rubric::prompt(&job.request.chat_messages(), answer),
            max_tokens: Some(self.judge_max_tokens),
            temperature: Some(0.0),
            params: None,
        };
        let started = std::time::Instant::now();
        let call = call::ask(client, &ask)
            .await
            .map_err(|source| JobError::Backend {
                call: "judge",
                url: endpoint.url.clone(),
                source: Box::new(source),
            })?;
        self.metrics
            .judge_seconds
            .observe(started.elapsed().as_secs_f64());
        let score = rubric::parse_rating(&call.text);
        if score.is_none() {
            tracing::warn!(
                reply_chars = call.text.len(),
                "the judge gave no rating; its tokens are booked without a grade"
            );
        }
        Ok((call, score))
    }

    async fn book(&self, event: &UsageEvent, encoding: Encoding) -> Result<(), BusError> {
        let h = envelope::outgoing(encoding, Some(&event.msg_id()));
        let payload: Bytes = encode(encoding, event).into();
        publish::durable(&self.js, "usage event", &self.ns.usage(), h, payload).await
    }

    fn count(&self, job: &ShadowJob, events: &[UsageEvent], verdict: Verdict) {
        let m = &self.metrics;
        let tenant = job.request.tenant.as_deref().unwrap_or("");
        m.tokens("shadow", tenant, &events[0].usage);
        for e in &events[1..] {
            m.tokens("judge", tenant, &e.usage);
        }
        for j in events.iter().filter_map(|e| e.judged.as_ref()) {
            m.label(tenant, j.tier.number(), j.good);
        }
        let (Some(a), Some(s)) = (verdict.answer, verdict.shadow) else {
            m.job("unrated");
            return;
        };
        m.job("judged");
        let (tier1, tier2) = match job.tier {
            Tier::Small => (a, s),
            Tier::Large => (s, a),
        };
        m.agree(tenant, rubric::is_good(tier1), rubric::is_good(tier2));
    }
}

/// What makes a job impossible, named.
pub fn check(job: &ShadowJob) -> Result<(), JobError> {
    let r = &job.request;
    triage_protocol::check_request_id(&r.id)
        .map_err(|e| JobError::Invalid(format!("field `request.id`: {e}")))?;
    if r.chat_messages().is_empty() {
        return Err(JobError::Invalid(
            "field `request`: neither `messages` nor `prompt` holds a question".into(),
        ));
    }
    if job.attempt == 0 || job.attempt >= SHADOW_ATTEMPT_BASE {
        return Err(JobError::Invalid(format!(
            "field `attempt`: {} is not an answering attempt (1 to {})",
            job.attempt,
            SHADOW_ATTEMPT_BASE - 1
        )));
    }
    Ok(())
}
