//! The chaos run's report: counts per fate, the ledger check, the faults
//! applied, whether the targets held, and the table printed for it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::plan::{Fault, Step};
use super::verdict::{Fate, LedgerVerdict};

/// One planned fault and what happened when it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Seconds from the first request.
    pub at_s: f64,
    /// What.
    pub target: String,
    /// Seconds down.
    pub down_for_s: f64,
    /// Killed (or, for Postgres, restarted).
    pub killed: bool,
    /// Started again.
    pub restarted: bool,
    /// The first failure applying it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FaultRecord {
    /// A fault not yet applied.
    pub fn planned(f: &Fault) -> Self {
        Self {
            at_s: f.at.as_secs_f64(),
            target: f.target.to_string(),
            down_for_s: f.down_for.as_secs_f64(),
            killed: false,
            restarted: false,
            error: None,
        }
    }

    /// Notes the outcome of one of its steps.
    pub fn record(&mut self, step: Step, outcome: Result<(), String>) {
        match (step, outcome) {
            (Step::Kill(_), Ok(())) => self.killed = true,
            (Step::Restart(_), Ok(())) => self.restarted = true,
            (_, Err(e)) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// What the report is made from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The seed.
    pub seed: u64,
    /// Requests/s offered.
    pub rate: f64,
    /// Seconds of load.
    pub load_secs: f64,
    /// Requests sent.
    pub sent: usize,
    /// Requests whose submission failed for 30 s.
    pub not_accepted: usize,
    /// Each accepted request's fate.
    pub fates: Vec<(String, Fate)>,
    /// The ledger check.
    pub ledger: LedgerVerdict,
    /// `id#attempt` of attempts that streamed but have no usage event.
    pub streamed_unbooked: Vec<String>,
    /// `id#attempt` of answering attempts without a usage event.
    pub answered_unbooked: Vec<String>,
    /// Undecodable replies and usage events.
    pub undecodable: (u64, usize),
    /// The faults.
    pub faults: Vec<FaultRecord>,
    /// Processes that exited on their own (restarted by the suite), by name.
    pub crashes: BTreeMap<String, usize>,
}

/// Examples kept per category in the report.
const EXAMPLES: usize = 10;

/// The report (also written as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// Requests/s offered.
    pub rate: f64,
    /// Seconds of load.
    pub load_secs: f64,
    /// Requests sent.
    pub sent: usize,
    /// Accepted (stored by JetStream).
    pub accepted: usize,
    /// Not accepted after 30 s of retries (the client knows; not lost).
    pub not_accepted: usize,
    /// Count per fate (`answered`, `lost`, `doubled`, …; error replies by code).
    pub fates: BTreeMap<String, usize>,
    /// Some request ids per fate other than answered.
    pub examples: BTreeMap<String, Vec<String>>,
    /// The ledger check.
    pub ledger: LedgerVerdict,
    /// Attempts that streamed chunks but were never booked (killed mid-stream).
    pub streamed_unbooked: usize,
    /// Answering attempts never booked.
    pub answered_unbooked: usize,
    /// Undecodable replies.
    pub undecodable_replies: u64,
    /// Undecodable usage events.
    pub undecodable_usage: usize,
    /// The faults applied.
    pub faults: Vec<FaultRecord>,
    /// Processes that exited on their own (restarted by the suite, as an
    /// orchestrator would), by name.
    pub crashes: BTreeMap<String, usize>,
    /// Which targets failed (empty: passed).
    pub failures: Vec<String>,
}

impl ChaosReport {
    /// All targets held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn count(&self, fate: &str) -> usize {
        self.fates.get(fate).copied().unwrap_or(0)
    }
}

fn fate_name(f: &Fate) -> String {
    match f {
        Fate::Answered => "answered".into(),
        Fate::ErrorReply { code } => format!("error_reply:{code}"),
        Fate::ReplyLostResultKept => "reply_lost_result_kept".into(),
        Fate::Lost => "lost".into(),
        Fate::Doubled { .. } => "doubled".into(),
        Fate::WrongText { .. } => "wrong_text".into(),
        Fate::ChunksMissing { .. } => "chunks_missing".into(),
    }
}

/// Builds the report and decides the targets.
pub fn report(i: Inputs) -> ChaosReport {
    let mut fates = BTreeMap::new();
    let mut examples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, f) in &i.fates {
        let name = fate_name(f);
        *fates.entry(name.clone()).or_insert(0) += 1;
        if *f != Fate::Answered {
            let ex = examples.entry(name).or_default();
            if ex.len() < EXAMPLES {
                ex.push(id.clone());
            }
        }
    }
    for (name, list) in [
        ("streamed_unbooked", &i.streamed_unbooked),
        ("answered_unbooked", &i.answered_unbooked),
    ] {
        if !list.is_empty() {
            examples.insert(name.into(), list.iter().take(EXAMPLES).cloned().collect());
        }
    }
    let mut r = ChaosReport {
        seed: i.seed,
        rate: i.rate,
        load_secs: i.load_secs,
        sent: i.sent,
        accepted: i.fates.len(),
        not_accepted: i.not_accepted,
        fates,
        examples,
        ledger: i.ledger,
        streamed_unbooked: i.streamed_unbooked.len(),
        answered_unbooked: i.answered_unbooked.len(),
        undecodable_replies: i.undecodable.0,
        undecodable_usage: i.undecodable.1,
        faults: i.faults,
        crashes: i.crashes,
        failures: Vec::new(),
    };
    r.failures = failures(&r);
    r
}

fn failures(r: &ChaosReport) -> Vec<String> {
    let mut f = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            f.push(what);
        }
    };
    check(r.count("lost") == 0, format!("{} lost", r.count("lost")));
    check(
        r.count("doubled") == 0,
        format!("{} doubled", r.count("doubled")),
    );
    check(
        r.count("wrong_text") == 0,
        format!("{} with wrong text", r.count("wrong_text")),
    );
    check(r.ledger.exact(), "ledger not exact".into());
    check(
        r.answered_unbooked == 0,
        format!("{} answering attempts not booked", r.answered_unbooked),
    );
    check(
        r.streamed_unbooked == 0,
        format!(
            "{} streamed (killed) attempts not booked",
            r.streamed_unbooked
        ),
    );
    check(
        r.faults.iter().all(|x| x.error.is_none()),
        "a fault could not be applied".into(),
    );
    f
}

/// The report as a Markdown table, targets marked.
pub fn table(r: &ChaosReport) -> String {
    let mut s = String::new();
    let mark = |ok: bool| if ok { "ok" } else { "**FAIL**" };
    let _ = writeln!(
        s,
        "| per request id (accepted: {}) | count | target |",
        r.accepted
    );
    let _ = writeln!(s, "|---|---|---|");
    let answered = r.count("answered");
    let errors: usize = r
        .fates
        .iter()
        .filter(|(k, _)| k.starts_with("error_reply:"))
        .map(|(_, v)| v)
        .sum();
    let rows = [
        (
            "exactly one final reply, text = its attempt's chunks",
            answered + errors,
            None,
        ),
        ("  of which error replies", errors, None),
        (
            "final reply lost in transit, kept result present",
            r.count("reply_lost_result_kept"),
            None,
        ),
        (
            "answering attempt's chunks lost in transit",
            r.count("chunks_missing"),
            None,
        ),
        (
            "lost (no final reply, no kept result)",
            r.count("lost"),
            Some(0),
        ),
        ("doubled finals", r.count("doubled"), Some(0)),
        (
            "text not the answering attempt's",
            r.count("wrong_text"),
            Some(0),
        ),
    ];
    for (what, n, target) in rows {
        let t = target.map_or(String::new(), |t| format!("{t}: {}", mark(n == t)));
        let _ = writeln!(s, "| {what} | {n} | {t} |");
    }
    let _ = writeln!(
        s,
        "| not accepted (submit failed for 30 s; the client knew) | {} | |",
        r.not_accepted
    );
    let l = &r.ledger;
    let _ = writeln!(s, "\n| ledger | count | target |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| usage events on llm.usage (distinct attempts) | {} ({}) | |",
        l.events, l.distinct_attempts
    );
    let _ = writeln!(
        s,
        "| ledger rows | {} | = distinct: {} |",
        l.rows,
        mark(l.rows == l.distinct_attempts)
    );
    for (what, n) in [
        ("attempts with an event, not booked", l.not_booked.len()),
        ("rows without an event", l.without_event.len()),
        ("rows differing from their event", l.differing.len()),
        (
            "answering attempts without a usage event",
            r.answered_unbooked,
        ),
        (
            "streamed (killed) attempts without a usage event",
            r.streamed_unbooked,
        ),
    ] {
        let _ = writeln!(s, "| {what} | {n} | 0: {} |", mark(n == 0));
    }
    let (e, b, u) = (l.event_totals, l.row_totals, l.rollup_totals);
    let _ = writeln!(
        s,
        "| tokens in/out: events / rows / rollup | {}/{} · {}/{} · {}/{} | equal: {} |",
        e.prompt_tokens,
        e.completion_tokens,
        b.prompt_tokens,
        b.completion_tokens,
        u.prompt_tokens,
        u.completion_tokens,
        mark(e == b && e == u)
    );
    let _ = writeln!(s, "\n{}", fault_line(r));
    if !r.crashes.is_empty() {
        let list: Vec<String> = r.crashes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        let _ = writeln!(
            s,
            "exited on their own and restarted by the suite (as an orchestrator would): {}",
            list.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "result: {}",
        if r.passed() {
            "PASS".to_string()
        } else {
            format!("FAIL ({})", r.failures.join(", "))
        }
    );
    s
}

fn fault_line(r: &ChaosReport) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for f in r.faults.iter().filter(|f| f.killed) {
        let class = f
            .target
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *by.entry(class.to_string()).or_insert(0) += 1;
    }
    let list: Vec<String> = by.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    format!(
        "faults applied (SIGKILL, restart after a pause; Postgres restarted): {}",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::verdict::Totals;

    fn inputs(fates: Vec<Fate>) -> Inputs {
        Inputs {
            seed: 1,
            rate: 10.0,
            load_secs: 10.0,
            sent: fates.len(),
            not_accepted: 0,
            fates: fates
                .into_iter()
                .enumerate()
                .map(|(i, f)| (format!("r{i}"), f))
                .collect(),
            ledger: LedgerVerdict {
                event_totals: Totals::default(),
                ..LedgerVerdict::default()
            },
            streamed_unbooked: Vec::new(),
            answered_unbooked: Vec::new(),
            undecodable: (0, 0),
            faults: Vec::new(),
            crashes: BTreeMap::new(),
        }
    }

    #[test]
    fn answered_errors_and_transit_losses_pass_lost_and_doubled_fail() {
        let r = report(inputs(vec![
            Fate::Answered,
            Fate::ErrorReply {
                code: "deadline_exceeded".into(),
            },
            Fate::ReplyLostResultKept,
            Fate::ChunksMissing { attempt: 1 },
        ]));
        assert!(r.passed(), "{:?}", r.failures);
        assert!(table(&r).contains("result: PASS"));
        let r = report(inputs(vec![
            Fate::Lost,
            Fate::Doubled { finals: 2 },
            Fate::Answered,
        ]));
        assert_eq!(r.failures, ["1 lost", "1 doubled"]);
        assert_eq!(r.examples["lost"], ["r0"]);
        assert!(table(&r).contains("FAIL (1 lost, 1 doubled)"));
    }

    #[test]
    fn unbooked_attempts_fail_the_ledger_target() {
        let mut i = inputs(vec![Fate::Answered]);
        i.streamed_unbooked = vec!["r0#1".into()];
        let r = report(i);
        assert_eq!(r.failures, ["1 streamed (killed) attempts not booked"]);
        assert_eq!(r.examples["streamed_unbooked"], ["r0#1"]);
    }
}
