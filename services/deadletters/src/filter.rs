//! Which dead letters a command applies to.

use crate::letter::Letter;

/// Every condition must hold; an unset one holds for all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// `Triage-Dead-Code` equals this.
    pub code: Option<String>,
    /// `Triage-Dead-Service` equals this.
    pub service: Option<String>,
    /// Dead-lettered at or after this, Unix seconds.
    pub since: Option<i64>,
    /// Dead-lettered before this, Unix seconds.
    pub until: Option<i64>,
}

impl Filter {
    /// Whether `letter` is selected.
    pub fn matches(&self, letter: &Letter) -> bool {
        self.code.as_ref().is_none_or(|c| *c == letter.code)
            && self.service.as_ref().is_none_or(|s| *s == letter.service)
            && self.since.is_none_or(|t| letter.time >= t)
            && self.until.is_none_or(|t| letter.time < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(code: &str, service: &str, time: i64) -> Letter {
        Letter {
            seq: 1,
            time,
            code: code.into(),
            service: service.into(),
            subject: "llm.requests".into(),
            reason: String::new(),
            deliveries: 1,
            bytes: 0,
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let l = letter("invalid_request", "router", 100);
        assert!(Filter::default().matches(&l));
        let f = Filter {
            code: Some("invalid_request".into()),
            service: Some("router".into()),
            since: Some(100),
            until: Some(101),
        };
        assert!(f.matches(&l));
        assert!(!Filter {
            code: Some("internal".into()),
            ..f.clone()
        }
        .matches(&l));
        assert!(!Filter {
            service: Some("worker-tier1".into()),
            ..f.clone()
        }
        .matches(&l));
        assert!(!Filter {
            since: Some(101),
            ..f.clone()
        }
        .matches(&l));
        assert!(!Filter {
            until: Some(100),
            ..f
        }
        .matches(&l));
    }
}
