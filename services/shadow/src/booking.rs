//! The usage events of one job's calls (pure): the shadow generation
//! (status `shadow`) and the two judge calls (status `judge`, each with the
//! grade it gave). Their attempts and message ids derive from the job
//! alone ([`triage_protocol::shadow::ShadowAttempts`]), so a redelivered
//! job books the same keys: the stream drops the repeats within its
//! duplicate window and the ledger's `ON CONFLICT DO NOTHING` after it.

use triage_protocol::shadow::{Judged, JudgedRole, JudgedText};
use triage_protocol::{ShadowJob, Tier, UsageEvent, UsageStatus};

use crate::call::Answer;

/// Who made a call: its tier (whose prices apply) and model.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The tier booked.
    pub tier: Tier,
    /// The model booked.
    pub model: &'a str,
}

fn event(job: &ShadowJob, by: Caller<'_>, attempt: u32, call: &Answer) -> UsageEvent {
    UsageEvent {
        version: triage_protocol::SCHEMA_VERSION,
        id: job.request.id.clone(),
        attempt,
        tenant: job.request.tenant.clone(),
        tier: by.tier,
        model: by.model.to_string(),
        usage: call.usage,
        status: UsageStatus::Shadow,
        score: None,
        reasons: Vec::new(),
        ttft_ms: None,
        total_ms: call.total_ms,
        finished_at_ms: call.finished_at_ms,
        error_code: None,
        judged: None,
    }
}

/// The shadow generation's event.
pub fn shadow(job: &ShadowJob, by: Caller<'_>, call: &Answer) -> UsageEvent {
    let mut e = event(job, by, job.attempts().shadow, call);
    e.reasons.push(format!("shadow_of_tier{}", job.tier));
    e
}

/// What a judge call graded.
#[derive(Debug, Clone, Copy)]
pub struct Graded<'a> {
    /// Which answer.
    pub role: JudgedRole,
    /// Who generated it.
    pub by: Caller<'a>,
    /// Its ledger attempt.
    pub attempt: u32,
    /// The rating read from the judge's reply, if any.
    pub score: Option<f64>,
    /// The graded answer's text, carried with the grade only when the
    /// service stores learning text (`learning.store_text`).
    pub text: Option<&'a str>,
}

/// A judge call's event, carrying its grade when the judge gave one.
pub fn judge(job: &ShadowJob, judge: Caller<'_>, call: &Answer, graded: Graded<'_>) -> UsageEvent {
    let attempts = job.attempts();
    let attempt = match graded.role {
        JudgedRole::Answer => attempts.judge_answer,
        JudgedRole::Shadow => attempts.judge_shadow,
    };
    let mut e = event(job, judge, attempt, call);
    e.status = UsageStatus::Judge;
    e.reasons.push(format!("judge_{}", graded.role.as_str()));
    e.judged = graded.score.map(|score| Judged {
        role: graded.role,
        tier: graded.by.tier,
        model: graded.by.model.to_string(),
        attempt: graded.attempt,
        score,
        good: crate::rubric::is_good(score),
        text: graded.text.map(|answer| JudgedText {
            messages: job.request.chat_messages(),
            answer: answer.to_string(),
        }),
    });
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::{Request, Usage};

    fn job() -> ShadowJob {
        let mut request = Request::from_prompt("q");
        request.id = "r1".into();
        request.tenant = Some("acme".into());
        ShadowJob {
            version: 1,
            request,
            tier: Tier::Small,
            model: "small".into(),
            attempt: 2,
            answer: "a".into(),
            answered_at_ms: 0,
        }
    }

    fn call() -> Answer {
        Answer {
            text: "t".into(),
            usage: Usage {
                prompt_tokens: 5,
                completion_tokens: 3,
                estimated: false,
            },
            total_ms: 10.0,
            finished_at_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn every_call_has_its_own_key_and_message_id_the_same_on_redelivery() {
        let large = Caller {
            tier: Tier::Large,
            model: "large",
        };
        let small = Caller {
            tier: Tier::Small,
            model: "small",
        };
        let graded = |role, score| Graded {
            role,
            by: small,
            attempt: 2,
            score,
            text: None,
        };
        let events = [
            shadow(&job(), large, &call()),
            judge(
                &job(),
                large,
                &call(),
                graded(JudgedRole::Answer, Some(8.0)),
            ),
            judge(&job(), large, &call(), graded(JudgedRole::Shadow, None)),
        ];
        let ids: Vec<String> = events.iter().map(UsageEvent::msg_id).collect();
        for (id, attempt) in ids.iter().zip(["1000002", "2000002", "3000002"]) {
            assert!(
                id.starts_with("usage:") && id.ends_with(&format!(":{attempt}")),
                "{id}"
            );
        }
        assert_eq!(events[0].status, UsageStatus::Shadow);
        assert_eq!(events[1].status, UsageStatus::Judge);
        let j = events[1].judged.as_ref().unwrap();
        assert!(j.good && j.score == 8.0 && j.tier == Tier::Small && j.attempt == 2);
        assert_eq!(
            events[2].judged, None,
            "no rating, no grade; the tokens are booked"
        );
        let again = shadow(&job(), large, &call());
        assert_eq!(again, events[0]);
    }

    #[test]
    fn the_text_rides_with_the_grade_only_when_given() {
        let small = Caller {
            tier: Tier::Small,
            model: "small",
        };
        let graded = |text| Graded {
            role: JudgedRole::Answer,
            by: small,
            attempt: 2,
            score: Some(3.0),
            text,
        };
        let without = judge(&job(), small, &call(), graded(None));
        assert_eq!(without.judged.unwrap().text, None);
        let with = judge(&job(), small, &call(), graded(Some("the answer")));
        let text = with.judged.unwrap().text.unwrap();
        assert_eq!(text.answer, "the answer");
        assert_eq!(text.messages, job().request.chat_messages());
    }
}
