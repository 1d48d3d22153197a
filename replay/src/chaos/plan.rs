//! When to kill what: a seeded plan of faults over the load window. Each
//! class of target (routers, tier-1 workers, tier-2 workers, ledger
//! writers, NATS nodes) is hit `kills` times, once in each of `kills`
//! equal slots of the window at a random moment, and is down for a random
//! pause; a slot leaves room for its pause, so one target is never killed
//! twice at once and at most one NATS node is down at any time. Postgres is
//! restarted once, in the middle half of the window.

use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Something the suite kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Router replica `i`.
    Router(usize),
    /// Worker replica `index` of `tier`.
    Worker {
        /// 1 or 2.
        tier: u8,
        /// The replica.
        index: usize,
    },
    /// Ledger writer `i`.
    Ledger(usize),
    /// NATS node `i` (0-based).
    Nats(usize),
    /// The system Postgres (restarted, not killed).
    Postgres,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Router(i) => write!(f, "router-{}", i + 1),
            Target::Worker { tier, index } => write!(f, "worker-tier{tier}-{}", index + 1),
            Target::Ledger(i) => write!(f, "ledger-{}", i + 1),
            Target::Nats(i) => write!(f, "nats-{}", i + 1),
            Target::Postgres => write!(f, "postgres"),
        }
    }
}

/// What the plan may hit.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    /// RNG seed: the same seed gives the same plan.
    pub seed: u64,
    /// Faults start no earlier than this (from the first request).
    pub start: Duration,
    /// And end (the target restarted) no later than this.
    pub end: Duration,
    /// Router replicas.
    pub routers: usize,
    /// Workers per tier.
    pub workers_per_tier: usize,
    /// Ledger writers.
    pub ledgers: usize,
    /// The NATS nodes that may be killed (0-based).
    pub nats_nodes: Vec<usize>,
    /// Kills per class of target.
    pub kills: usize,
    /// Shortest and longest time a killed target stays down.
    pub pause: (Duration, Duration),
    /// Restart Postgres once.
    pub restart_postgres: bool,
}

/// One fault: `target` killed at `at` and started again `down_for` later.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// From the first request.
    pub at: Duration,
    /// What.
    pub target: Target,
    /// How long it stays down (zero for Postgres: its restart is one step).
    pub down_for: Duration,
}

/// A step of the plan in time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// SIGKILL it (Postgres: restart it).
    Kill(Target),
    /// Start it again.
    Restart(Target),
}

/// The faults, sorted by time.
pub fn faults(spec: &PlanSpec) -> Vec<Fault> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let tiers = |tier: u8| -> Vec<Target> {
        (0..spec.workers_per_tier)
            .map(|index| Target::Worker { tier, index })
            .collect()
    };
    let classes: Vec<Vec<Target>> = vec![
        (0..spec.routers).map(Target::Router).collect(),
        tiers(1),
        tiers(2),
        (0..spec.ledgers).map(Target::Ledger).collect(),
        spec.nats_nodes.iter().copied().map(Target::Nats).collect(),
    ];
    let window = spec.end.saturating_sub(spec.start);
    let mut out = Vec::new();
    for class in classes.iter().filter(|c| !c.is_empty()) {
        let slot = window / spec.kills.max(1) as u32;
        for k in 0..spec.kills {
            let down_for = random_between(&mut rng, spec.pause.0, spec.pause.1);
            let room = slot.saturating_sub(down_for);
            let at = spec.start + slot * k as u32 + random_between(&mut rng, Duration::ZERO, room);
            let target = class[rng.gen_range(0..class.len())];
            out.push(Fault {
                at,
                target,
                down_for,
            });
        }
    }
    if spec.restart_postgres {
        let at = spec.start + random_between(&mut rng, window / 4, window * 3 / 4);
        out.push(Fault {
            at,
            target: Target::Postgres,
            down_for: Duration::ZERO,
        });
    }
    out.sort_by_key(|f| f.at);
    out
}

/// The faults as kill and restart steps in time order, each with the index
/// of its fault.
pub fn steps(faults: &[Fault]) -> Vec<(Duration, usize, Step)> {
    let mut steps: Vec<(Duration, usize, Step)> = faults
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            let kill = (f.at, i, Step::Kill(f.target));
            let restart = (f.target != Target::Postgres).then_some((
                f.at + f.down_for,
                i,
                Step::Restart(f.target),
            ));
            std::iter::once(kill).chain(restart)
        })
        .collect();
    // Stable: a kill and its own restart keep their order at equal times.
    steps.sort_by_key(|(at, _, _)| *at);
    steps
}

fn random_between(rng: &mut impl Rng, lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    Duration::from_secs_f64(rng.gen_range(lo.as_secs_f64()..hi.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> PlanSpec {
        PlanSpec {
            seed,
            start: Duration::from_secs(5),
            end: Duration::from_secs(65),
            routers: 2,
            workers_per_tier: 2,
            ledgers: 1,
            nats_nodes: vec![1, 2],
            kills: 3,
            pause: (Duration::from_millis(500), Duration::from_secs(3)),
            restart_postgres: true,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        assert_eq!(faults(&spec(7)), faults(&spec(7)));
        assert_ne!(faults(&spec(7)), faults(&spec(8)));
    }

    #[test]
    fn every_class_is_hit_kills_times_inside_the_window_and_postgres_once() {
        let f = faults(&spec(42));
        let count = |p: &dyn Fn(&Target) -> bool| f.iter().filter(|x| p(&x.target)).count();
        assert_eq!(count(&|t| matches!(t, Target::Router(_))), 3);
        assert_eq!(count(&|t| matches!(t, Target::Worker { tier: 1, .. })), 3);
        assert_eq!(count(&|t| matches!(t, Target::Worker { tier: 2, .. })), 3);
        assert_eq!(count(&|t| matches!(t, Target::Ledger(_))), 3);
        assert_eq!(count(&|t| matches!(t, Target::Nats(_))), 3);
        assert_eq!(count(&|t| *t == Target::Postgres), 1);
        assert!(f.iter().all(
            |x| x.at >= Duration::from_secs(5) && x.at + x.down_for <= Duration::from_secs(65)
        ));
        assert!(
            f.iter().all(|x| x.target != Target::Nats(0)),
            "node 1 is never killed"
        );
        assert!(f.windows(2).all(|w| w[0].at <= w[1].at), "sorted");
    }

    #[test]
    fn a_target_is_never_down_twice_at_once_nor_two_nats_nodes() {
        for seed in 0..200 {
            let f = faults(&spec(seed));
            for (i, a) in f.iter().enumerate() {
                for b in &f[i + 1..] {
                    let same_class = std::mem::discriminant(&a.target)
                        == std::mem::discriminant(&b.target)
                        && !matches!((a.target, b.target), (Target::Worker { tier: x, .. }, Target::Worker { tier: y, .. }) if x != y);
                    let overlap = b.at < a.at + a.down_for;
                    assert!(
                        !(same_class && overlap),
                        "seed {seed}: {a:?} overlaps {b:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn steps_restart_each_killed_target_after_its_pause() {
        let f = faults(&spec(3));
        let s = steps(&f);
        assert_eq!(s.len(), 2 * f.len() - 1, "postgres has no separate restart");
        for (i, fault) in f
            .iter()
            .enumerate()
            .filter(|(_, x)| x.target != Target::Postgres)
        {
            let kill = s
                .iter()
                .position(|x| *x == (fault.at, i, Step::Kill(fault.target)))
                .unwrap();
            let restart = s
                .iter()
                .position(|x| *x == (fault.at + fault.down_for, i, Step::Restart(fault.target)))
                .unwrap();
            assert!(kill < restart);
        }
    }
}
