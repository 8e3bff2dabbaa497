//! The build queue: with `maxConcurrentBuilds` (the cluster) or
//! `maxConcurrentBuildsPerNamespace` set, builds over the limits wait in phase `Queued`. Which
//! build starts next is a pure function of the ImageBuilds as the API server holds them, so every
//! replica and every restart decides the same:
//!
//! - A build is *active* while its observed generation's run holds a Pod (phase Pending or
//!   Running with a Pod name; retries keep the slot) and *waiting* while its generation has not
//!   started (no status for it yet, or phase Queued).
//! - Within a namespace, first come first served: by the time the operator first saw the
//!   generation waiting (`status.queuedAt`, else the object's creation time), then by name
//!   (timestamps have one-second resolution; names are unique in a namespace).
//! - Across namespaces, round-robin by running builds: the next build comes from the namespace
//!   with the fewest builds active or already ahead in the order; ties go to the namespace whose
//!   next build has waited longest, then to the namespace name. So a namespace that submits 100
//!   builds does not hold back one that submits 1. A build just admitted counts exactly as one
//!   that runs, so the order does not change while admitted builds start (a rule that looked at
//!   when builds started did, and admitted a fifth build under a limit of four).
//! - Builds are admitted in that order while both limits allow; a namespace at its own limit is
//!   skipped, not waited for.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use kube::ResourceExt;

use crate::crd::{ImageBuild, Phase};

/// The limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub cluster: Option<usize>,
    pub per_namespace: Option<usize>,
}

impl Limits {
    /// Whether any limit is set (without one there is no queue at all).
    pub fn active(&self) -> bool {
        self.cluster.is_some() || self.per_namespace.is_some()
    }
}

/// `namespace/name`.
pub type Key = (String, String);

/// One ImageBuild as the queue sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub active: bool,
    /// When it started waiting (for waiting builds).
    pub since: Timestamp,
}

/// Whether `b`'s current generation still needs a slot (it has not started), whether it holds
/// one (it runs), or neither (it ended, or it is cancelled).
pub fn entry(b: &ImageBuild) -> Option<Entry> {
    let key = (b.namespace().unwrap_or_default(), b.name_any());
    if b.metadata.deletion_timestamp.is_some() || b.spec.cancel == Some(true) {
        return None;
    }
    let generation = b.metadata.generation.unwrap_or(0);
    let created = b
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let st = b.status.as_ref();
    let current = st.filter(|s| s.observed_generation == Some(generation));
    match current.and_then(|s| s.phase) {
        None => Some(Entry {
            key,
            active: false,
            since: created,
        }),
        Some(Phase::Queued) => Some(Entry {
            key,
            active: false,
            since: current
                .and_then(|s| s.queued_at.as_ref())
                .map_or(created, |t| t.0),
        }),
        Some(Phase::Pending | Phase::Running) => {
            // An invalid spec never gets here (it fails); a Pod name means a run started.
            current.and_then(|s| s.pod_name.as_ref()).map(|_| Entry {
                key,
                active: true,
                since: created,
            })
        }
        Some(Phase::Succeeded | Phase::Failed | Phase::Cancelled) => None,
    }
}

/// What the queue decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Waiting builds that may start now.
    pub admitted: BTreeSet<Key>,
    /// The place of every waiting build that may not start now (1 = the next to start after
    /// the admitted ones). Admitted builds have none, so the places stay the same whether a
    /// build just admitted is still seen waiting or already running.
    pub positions: BTreeMap<Key, usize>,
    /// Builds that hold a slot.
    pub active: usize,
}

/// The order and admissions for `entries` under `limits` (see the module's rules).
pub fn schedule(entries: &[Entry], limits: &Limits) -> Schedule {
    let mut active_in: BTreeMap<&str, usize> = BTreeMap::new();
    let mut waiting: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        if e.active {
            *active_in.entry(e.key.0.as_str()).or_default() += 1;
        } else {
            waiting.entry(e.key.0.as_str()).or_default().push(e);
        }
    }
    for list in waiting.values_mut() {
        list.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.key.1.cmp(&b.key.1)));
        list.reverse(); // pop() takes the first
    }
    let active: usize = active_in.values().sum();
    // The round-robin order.
    let mut taken: BTreeMap<&str, usize> = active_in.clone();
    let mut order: Vec<&Entry> = Vec::new();
    loop {
        let next = waiting
            .iter()
            .filter_map(|(ns, list)| list.last().map(|head| (*ns, *head)))
            .min_by(|(a_ns, a), (b_ns, b)| {
                let count = |ns: &str| taken.get(ns).copied().unwrap_or(0);
                count(a_ns)
                    .cmp(&count(b_ns))
                    .then_with(|| a.since.cmp(&b.since))
                    .then_with(|| a_ns.cmp(b_ns))
            });
        let Some((ns, _)) = next else { break };
        let e = waiting
            .get_mut(ns)
            .and_then(Vec::pop)
            .expect("a head was found");
        *taken.entry(ns).or_default() += 1;
        order.push(e);
    }
    // Admissions while the limits allow.
    let mut running = active;
    let mut running_in = active_in;
    let mut s = Schedule {
        active,
        ..Default::default()
    };
    for e in &order {
        let ns = e.key.0.as_str();
        let in_ns = running_in.get(ns).copied().unwrap_or(0);
        let cluster_ok = limits.cluster.is_none_or(|c| running < c);
        let ns_ok = limits.per_namespace.is_none_or(|c| in_ns < c);
        if cluster_ok && ns_ok {
            s.admitted.insert(e.key.clone());
            running += 1;
            *running_in.entry(ns).or_default() += 1;
        } else {
            let place = s.positions.len() + 1;
            s.positions.insert(e.key.clone(), place);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn waiting(ns: &str, name: &str, at: i64) -> Entry {
        Entry {
            key: (ns.into(), name.into()),
            active: false,
            since: ts(at),
        }
    }

    fn names(keys: impl IntoIterator<Item = Key>) -> Vec<String> {
        keys.into_iter()
            .map(|(ns, n)| format!("{ns}/{n}"))
            .collect()
    }

    /// 3 namespaces x 10 builds, created within the same few seconds, limits 4 and 2.
    fn thirty() -> Vec<Entry> {
        let mut v = Vec::new();
        for (ns, offset) in [("team-a", 0), ("team-b", 1), ("team-c", 2)] {
            for i in 0..10 {
                v.push(waiting(ns, &format!("b{i:02}"), offset + i / 3));
            }
        }
        v
    }

    fn order(s: &Schedule) -> Vec<String> {
        let mut by_pos: Vec<(&usize, &Key)> = s.positions.iter().map(|(k, p)| (p, k)).collect();
        by_pos.sort();
        names(by_pos.into_iter().map(|(_, k)| k.clone()))
    }

    #[test]
    fn round_robin_across_namespaces_first_come_within_one() {
        let limits = Limits {
            cluster: Some(4),
            per_namespace: Some(2),
        };
        let s = schedule(&thirty(), &limits);
        let one = schedule(
            &thirty(),
            &Limits {
                cluster: Some(1),
                per_namespace: None,
            },
        );
        assert_eq!(
            order(&one)[..8],
            [
                "team-b/b00",
                "team-c/b00",
                "team-a/b01",
                "team-b/b01",
                "team-c/b01",
                "team-a/b02",
                "team-b/b02",
                "team-c/b02"
            ]
        );
        assert_eq!(names(one.admitted), ["team-a/b00"]);
        assert_eq!(s.positions.len(), 26);
        // The places of the others, in the same round-robin order.
        assert_eq!(order(&s)[..3], ["team-b/b01", "team-c/b01", "team-a/b02"]);
        assert_eq!(
            names(s.admitted.clone()),
            ["team-a/b00", "team-a/b01", "team-b/b00", "team-c/b00"]
        );
    }

    #[test]
    fn the_same_state_decides_the_same_whatever_the_list_order() {
        let limits = Limits {
            cluster: Some(4),
            per_namespace: Some(2),
        };
        let mut entries = thirty();
        let first = schedule(&entries, &limits);
        entries.reverse();
        assert_eq!(schedule(&entries, &limits), first);
        entries.sort_by(|a, b| a.key.1.cmp(&b.key.1));
        assert_eq!(schedule(&entries, &limits), first);
    }

    #[test]
    fn running_builds_hold_slots_and_weigh_on_their_namespace() {
        let mut entries = thirty();
        for e in entries
            .iter_mut()
            .filter(|e| e.key.1 == "b00" || e.key.1 == "b01")
        {
            if e.key.0 == "team-a" {
                e.active = true;
            }
        }
        let limits = Limits {
            cluster: Some(4),
            per_namespace: Some(2),
        };
        let s = schedule(&entries, &limits);
        assert_eq!(s.active, 2);
        // team-a is at its own limit: b and c get the two free slots.
        assert_eq!(names(s.admitted.clone()), ["team-b/b00", "team-c/b00"]);
        // And team-a's next build comes after b and c have caught up.
        assert_eq!(order(&s)[..3], ["team-b/b01", "team-c/b01", "team-a/b02"]);
    }

    #[test]
    fn admitted_builds_that_start_do_not_change_the_decision() {
        // All waiting: four admitted. Then any of them seen running (in any order, at any time)
        // leaves the same four holding or getting the slots.
        let limits = Limits {
            cluster: Some(4),
            per_namespace: Some(2),
        };
        let first = schedule(&thirty(), &limits);
        let admitted: Vec<Key> = first.admitted.iter().cloned().collect();
        for mask in 0..(1u32 << admitted.len()) {
            let mut entries = thirty();
            for (i, key) in admitted.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    let e = entries.iter_mut().find(|e| &e.key == key).unwrap();
                    e.active = true;
                }
            }
            let s = schedule(&entries, &limits);
            let holding: BTreeSet<Key> = entries
                .iter()
                .filter(|e| e.active)
                .map(|e| e.key.clone())
                .chain(s.admitted.iter().cloned())
                .collect();
            assert_eq!(holding, first.admitted, "mask {mask:b}");
            assert_eq!(s.positions, first.positions, "mask {mask:b}");
        }
    }

    #[test]
    fn ties_in_time_go_by_name_and_namespace() {
        let entries = [
            waiting("ns-b", "z", 5),
            waiting("ns-b", "a", 5),
            waiting("ns-a", "m", 5),
        ];
        let s = schedule(
            &entries,
            &Limits {
                cluster: Some(1),
                per_namespace: None,
            },
        );
        assert_eq!(order(&s), ["ns-b/a", "ns-b/z"]);
        assert_eq!(names(s.admitted), ["ns-a/m"]);
    }

    #[test]
    fn no_limit_admits_everything() {
        let s = schedule(&thirty(), &Limits::default());
        assert_eq!(s.admitted.len(), 30);
        assert!(s.positions.is_empty());
    }
}
