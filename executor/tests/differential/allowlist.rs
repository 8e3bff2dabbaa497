//! The differential test's allowlist: every difference between the reference builder and kiln
//! that the comparison tolerates, one named entry each, with what differs, why that is
//! acceptable and in which cases; and the ledger that counts what each entry hid, so that an
//! entry which hides nothing in a full run is reported as stale. It must never tolerate a
//! difference silently: everything it hides is counted and shown.

use std::collections::BTreeMap;

use super::support::{path_matches, Aspect, LayerKind, PathDiff, Step, StepDiff};

/// One tolerated difference.
pub struct Tolerance {
    /// A short, stable name, shown in reports.
    pub name: &'static str,
    /// The cases it applies to; empty means every case.
    pub cases: &'static [&'static str],
    pub what: Tolerated,
    /// What differs and why that is acceptable. A Kiln bug kept visible but not failing the run
    /// starts with "KNOWN BUG:".
    pub why: &'static str,
}

/// The kinds of difference an entry can tolerate.
pub enum Tolerated {
    /// These aspects of the listed paths; a path ending with `/` stands for the directory and
    /// everything under it.
    Path {
        paths: &'static [&'static str],
        aspects: &'static [Aspect],
    },
    /// A history `created_by` spelling: a rewrite to the canonical form (the Dockerfile
    /// instruction as written), applied to both sides before histories are compared. It returns
    /// the rewritten text when the spelling is its own, `None` otherwise.
    CreatedBy(fn(&str) -> Option<String>),
    /// A step whose canonical `created_by` starts with `instruction` adds `reference` in the
    /// reference image where kiln's adds `kiln` (layer kinds compared as [`LayerKind::same_as`]).
    Layer {
        instruction: &'static str,
        reference: LayerKind,
        kiln: LayerKind,
    },
}

impl Tolerance {
    fn applies_to(&self, case: &str) -> bool {
        self.cases.is_empty() || self.cases.contains(&case)
    }

    pub fn known_bug(&self) -> bool {
        self.why.starts_with("KNOWN BUG:")
    }
}

/// How often each entry hid something over a whole run, and for path entries where.
#[derive(Default)]
pub struct Ledger {
    uses: BTreeMap<&'static str, usize>,
    paths: BTreeMap<&'static str, Vec<String>>,
}

impl Ledger {
    fn hit(&mut self, name: &'static str) {
        *self.uses.entry(name).or_default() += 1;
    }

    pub fn uses(&self, name: &str) -> usize {
        self.uses.get(name).copied().unwrap_or(0)
    }

    /// The `case:path` places where a path entry hid something, in the order met.
    pub fn paths(&self, name: &str) -> &[String] {
        self.paths.get(name).map_or(&[], Vec::as_slice)
    }

    /// The entries that hid nothing although every case they apply to ran (`all_ran`: the run
    /// covered every case of the corpus, which entries for every case need).
    pub fn stale<'a>(
        &self,
        list: &'a [Tolerance],
        ran: &[String],
        all_ran: bool,
    ) -> Vec<&'a Tolerance> {
        list.iter()
            .filter(|t| self.uses(t.name) == 0)
            .filter(|t| {
                if t.cases.is_empty() {
                    all_ran
                } else {
                    t.cases.iter().all(|c| ran.iter().any(|r| r == c))
                }
            })
            .collect()
    }
}

/// `diffs` without what the entries for `case` tolerate (a path difference loses the tolerated
/// aspects and is dropped when none is left).
pub fn filter_paths(
    case: &str,
    diffs: Vec<PathDiff>,
    list: &[Tolerance],
    ledger: &mut Ledger,
) -> Vec<PathDiff> {
    let mut out = Vec::new();
    for d in diffs {
        let mut left = Some(d);
        for t in list.iter().filter(|t| t.applies_to(case)) {
            let Tolerated::Path { paths, aspects } = &t.what else {
                continue;
            };
            let Some(d) = left.take() else { break };
            if !paths.iter().any(|p| path_matches(p, d.path())) {
                left = Some(d);
                continue;
            }
            let rest = d.without(aspects);
            if rest.as_ref() != Some(&d) {
                ledger.hit(t.name);
                ledger
                    .paths
                    .entry(t.name)
                    .or_default()
                    .push(format!("{case}:{}", d.path()));
            }
            left = rest;
        }
        out.extend(left);
    }
    out
}

/// The steps with every `created_by` in canonical spelling: each rewrite entry for `case` is
/// applied in list order, and counted when it changed a text.
pub fn canonical_steps(
    case: &str,
    steps: &[Step],
    list: &[Tolerance],
    ledger: &mut Ledger,
) -> Vec<Step> {
    steps
        .iter()
        .map(|s| {
            let mut created_by = s.created_by.clone();
            for t in list.iter().filter(|t| t.applies_to(case)) {
                if let Tolerated::CreatedBy(rewrite) = t.what {
                    if let Some(new) = rewrite(&created_by) {
                        if new != created_by {
                            ledger.hit(t.name);
                            created_by = new;
                        }
                    }
                }
            }
            Step {
                created_by,
                layer: s.layer,
            }
        })
        .collect()
}

/// `diffs` without the layer differences the entries for `case` tolerate.
pub fn filter_steps(
    case: &str,
    diffs: Vec<StepDiff>,
    list: &[Tolerance],
    ledger: &mut Ledger,
) -> Vec<StepDiff> {
    diffs
        .into_iter()
        .filter(|d| {
            let StepDiff::Layer {
                created_by,
                expected,
                actual,
                ..
            } = d
            else {
                return true;
            };
            let hit = list.iter().filter(|t| t.applies_to(case)).find(|t| {
                matches!(t.what, Tolerated::Layer { instruction, reference, kiln }
                    if created_by.starts_with(instruction)
                        && reference.same_as(*expected)
                        && kiln.same_as(*actual))
            });
            match hit {
                Some(t) => {
                    ledger.hit(t.name);
                    false
                }
                None => true,
            }
        })
        .collect()
}
