//! Client feedback on an answered request, sent on `llm.feedback`
//! (core NATS request–reply; `llm.feedback.<tenant>` binds the tenant):
//! `{"id": "...", "rating": "good" | "bad" | 0–10, "comment": "..."}`.
//! The reply is a [`FeedbackReceipt`] or an [`crate::ErrorReply`].

use serde::{Deserialize, Serialize};

use crate::ids::check_request_id;

/// A score at or above this is "good" (the single-answer rubric of the
/// shipped data: 1–10, good at 7 or more).
pub const GOOD_SCORE: f64 = 7.0;

/// Longest comment kept, in bytes.
pub const MAX_COMMENT_BYTES: usize = 4096;

/// How the client rated the answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Rating {
    /// `"good"` or `"bad"`.
    Verdict(Verdict),
    /// A score from 0 to 10.
    Score(f64),
}

/// A thumbs-up or thumbs-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The answer served the client well.
    Good,
    /// It did not.
    Bad,
}

impl<'de> Deserialize<'de> for Rating {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Rating;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""good", "bad" or a score from 0 to 10"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rating, E> {
                match v {
                    "good" => Ok(Rating::Verdict(Verdict::Good)),
                    "bad" => Ok(Rating::Verdict(Verdict::Bad)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Rating, E> {
                Ok(Rating::Score(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rating, E> {
                Ok(Rating::Score(v as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rating, E> {
                Ok(Rating::Score(v as f64))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Rating {
    /// Whether the rating counts as a good answer.
    pub fn is_good(self) -> bool {
        match self {
            Rating::Verdict(v) => v == Verdict::Good,
            Rating::Score(s) => s >= GOOD_SCORE,
        }
    }

    /// The score, when the client gave one.
    pub fn score(self) -> Option<f64> {
        match self {
            Rating::Score(s) => Some(s),
            Rating::Verdict(_) => None,
        }
    }
}

/// Feedback on one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// The id the request was sent with.
    pub id: String,
    /// The rating.
    pub rating: Rating,
    /// Free text (kept only when the deployment stores text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The tenant, on plain `llm.feedback` (the gateway's subject); a
    /// tenant-bound subject's tenant wins and a different one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Why feedback was refused before any look-up: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidFeedback {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Feedback {
    /// Checks every field.
    pub fn check(&self) -> Result<(), InvalidFeedback> {
        check_request_id(&self.id).map_err(|e| InvalidFeedback {
            field: "id",
            reason: e.to_string(),
        })?;
        if let Rating::Score(s) = self.rating {
            if !(0.0..=10.0).contains(&s) {
                return Err(InvalidFeedback {
                    field: "rating",
                    reason: format!("a score must be within 0 and 10, got {s}"),
                });
            }
        }
        match &self.comment {
            Some(c) if c.len() > MAX_COMMENT_BYTES => Err(InvalidFeedback {
                field: "comment",
                reason: format!(
                    "{} bytes, at most {MAX_COMMENT_BYTES} are accepted",
                    c.len()
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// The answer to accepted feedback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackReceipt {
    /// Always `feedback`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The rated request.
    pub id: String,
    /// The tenant it was booked to (`None`: untenanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Whether the rating counts as good.
    pub good: bool,
    /// True when an earlier rating of the same request was replaced.
    pub replaced: bool,
}

impl FeedbackReceipt {
    /// The receipt for `feedback` booked to `tenant`.
    pub fn new(feedback: &Feedback, tenant: Option<String>, replaced: bool) -> Self {
        Self {
            kind: "feedback".into(),
            id: feedback.id.clone(),
            tenant,
            good: feedback.rating.is_good(),
            replaced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Feedback, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn verdicts_and_scores_parse_and_say_whether_good() {
        let f = parse(r#"{"id":"r1","rating":"good"}"#).unwrap();
        assert!(f.rating.is_good() && f.rating.score().is_none());
        assert!(!parse(r#"{"id":"r1","rating":"bad"}"#)
            .unwrap()
            .rating
            .is_good());
        let f = parse(r#"{"id":"r1","rating":7,"comment":"fine"}"#).unwrap();
        assert!(f.rating.is_good());
        assert_eq!(f.rating.score(), Some(7.0));
        assert!(!parse(r#"{"id":"r1","rating":6.5}"#)
            .unwrap()
            .rating
            .is_good());
        f.check().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let e = crate::decode::<Feedback>(crate::Encoding::Json, br#"{"id":"r1","rating":"meh"}"#)
            .unwrap_err();
        assert!(
            e.to_string().contains("`rating`") && e.to_string().contains("good"),
            "{e}"
        );
        let msgpack =
            rmp_serde::to_vec_named(&serde_json::json!({"id": "r1", "rating": 4})).unwrap();
        let f = crate::decode::<Feedback>(crate::Encoding::MsgPack, &msgpack).unwrap();
        assert_eq!(f.rating, Rating::Score(4.0));
        assert!(parse(r#"{"id":"r1"}"#).unwrap_err().contains("rating"));
        let f = parse(r#"{"id":"r1","rating":11}"#).unwrap();
        assert_eq!(f.check().unwrap_err().field, "rating");
        let f = parse(r#"{"id":"a b","rating":1}"#).unwrap();
        assert_eq!(f.check().unwrap_err().field, "id");
        let long = "x".repeat(MAX_COMMENT_BYTES + 1);
        let f = parse(&format!(r#"{{"id":"r1","rating":1,"comment":"{long}"}}"#)).unwrap();
        assert_eq!(f.check().unwrap_err().field, "comment");
    }

    #[test]
    fn the_receipt_is_tagged() {
        let f = parse(r#"{"id":"r1","rating":"good"}"#).unwrap();
        let r = FeedbackReceipt::new(&f, Some("acme".into()), false);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "feedback");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["good"], true);
    }
}
