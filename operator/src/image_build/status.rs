//! From what was observed (the build, its Pod of the current attempt and, while that Pod has not
//! started, what the kubelet says about it) to what to do next and the new status. Pure: the
//! clock is a parameter, no client.
//!
//! State lives in `status` (observedGeneration, attempts, podName), so the decision after an
//! operator restart is the same as before it: a finished generation is never rerun, a running
//! attempt's Pod is found again by its deterministic name.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::pod::{ExecutorResult, CONTAINER};
use super::reason;
use super::validate::{InvalidSpec, ValidSpec};
use crate::conditions::{self, Desired, Status};
use crate::config::OperatorConfig;
use crate::crd::{
    BuiltImage, CacheStatus, ImageBuild, ImageBuildStatus, Phase, RunRecord, SourceStatus,
};
use crate::names;
use crate::ownership::POD_NAME_CONFLICT;

/// What the controller read from the API server for one reconcile.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The Pod named for the current attempt (see [`current_attempt`]), if it exists.
    pub pod: Option<Pod>,
    /// The Secret the kubelet cannot mount into that Pod because it does not exist (from the
    /// Pod's Warning Events, read only while it has not started; see [`crate::pod_events`]).
    pub missing_secret: Option<String>,
    /// A key the kubelet cannot find in an existing Secret it mounts into that Pod.
    pub missing_secret_key: Option<crate::pod_events::MissingKey>,
    /// A Pod this build does not control holds the current attempt's name (described); `pod`
    /// is then `None` and nothing is created until the name is free.
    pub foreign_pod: Option<String>,
}

/// The state of an executor Pod, read from its phase and container status.
#[derive(Debug, Clone, PartialEq)]
pub enum PodOutcome {
    Pending,
    Running,
    Succeeded {
        result: ExecutorResult,
        finished: Option<Timestamp>,
    },
    Failed {
        reason: &'static str,
        message: String,
        finished: Option<Timestamp>,
    },
}

/// A notable transition, published as a Kubernetes Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What the controller must do after a reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to write, or `None` when nothing changed (a finished generation).
    pub status: Option<ImageBuildStatus>,
    /// Create the executor Pod for this attempt (idempotent: AlreadyExists is success).
    pub create_attempt: Option<i32>,
    /// Delete this executor Pod: its attempt failed while the Pod had not ended by itself (an
    /// image that cannot be pulled, spec.timeout passed before it started or finished).
    pub delete_pod: Option<String>,
    /// Delete still-running Pods of older generations (a new generation started).
    pub supersede_old_generations: bool,
    pub event: Option<BuildEvent>,
    /// Reconcile again after this delay even without a watch event (backoff, Secret wait).
    pub requeue: Option<Duration>,
    /// Build finished (succeeded or failed for good) in this reconcile: (succeeded, duration).
    pub finished: Option<(bool, Option<Duration>)>,
}

impl Plan {
    /// Nothing to do yet: no status, Pod, Event or requeue; older generations' Pods are
    /// superseded when `supersede`.
    pub fn nothing(supersede: bool) -> Plan {
        Plan {
            status: None,
            create_attempt: None,
            delete_pod: None,
            supersede_old_generations: supersede,
            event: None,
            requeue: None,
            finished: None,
        }
    }
}

/// How often a build whose Pod name is taken by a stranger looks again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(30);

/// The executor container's terminated state, if it has one.
fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// The end of a program's output as a status may carry it: the last `cfg.failure_lines`
/// non-empty lines within `cfg.failure_bytes` bytes (see [`crate::text::excerpt`]).
pub fn output_excerpt(text: &str, cfg: &OperatorConfig) -> String {
    crate::text::excerpt(text, cfg.failure_lines, cfg.failure_bytes)
}

/// Reads the outcome of an executor Pod; output is copied only as a bounded excerpt.
pub fn observe_pod(pod: &Pod, cfg: &OperatorConfig) -> PodOutcome {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let term = terminated(pod);
    let finished = term.and_then(|t| t.finished_at.as_ref()).map(|t| t.0);
    let message = term.and_then(|t| t.message.as_deref()).unwrap_or("");
    match phase {
        "Running" => PodOutcome::Running,
        "Succeeded" => match serde_json::from_str::<ExecutorResult>(message.trim()) {
            Ok(result) if result.digest.starts_with("sha256:") => PodOutcome::Succeeded { result, finished },
            _ => PodOutcome::Failed {
                reason: reason::BUILD_FAILED,
                message: format!(
                    "the executor exited successfully but its termination message is not the expected \
                     JSON {{\"digest\":\"sha256:...\",\"references\":[...]}}: {:?}",
                    output_excerpt(message, cfg)
                ),
                finished,
            },
        },
        "Failed" => {
            let pod_reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
            let pod_message = crate::text::one_line(
                status.and_then(|s| s.message.as_deref()).unwrap_or_default(),
                crate::text::MAX_LINE,
            );
            if pod_reason == "Evicted" {
                PodOutcome::Failed {
                    reason: reason::EVICTED,
                    message: format!("the kubelet evicted the executor Pod: {pod_message}"),
                    finished: finished.or_else(|| latest_condition_time(pod)),
                }
            } else if term.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
                let limit = memory_limit(pod)
                    .map(|l| format!(" of {l}"))
                    .unwrap_or_default();
                PodOutcome::Failed {
                    reason: reason::OOM_KILLED,
                    message: format!(
                        "the executor was killed for exceeding its memory limit{limit} (OOMKilled): raise spec.resources.limits.memory"
                    ),
                    finished,
                }
            } else if pod_reason == "DeadlineExceeded" {
                PodOutcome::Failed {
                    reason: reason::TIMEOUT,
                    message: format!("the build exceeded spec.timeout and was stopped. {pod_message}")
                        .trim()
                        .to_string(),
                    finished: finished.or_else(|| latest_condition_time(pod)),
                }
            } else {
                let code = term.map(|t| t.exit_code);
                let out = output_excerpt(message, cfg);
                let mut m = match code {
                    Some(c) => format!("the executor failed with exit code {c}"),
                    None => "the executor Pod failed".to_string(),
                };
                if !out.is_empty() {
                    m.push_str(":\n");
                    m.push_str(&out);
                } else if let Some(r) = term.and_then(|t| t.reason.as_deref()) {
                    m.push_str(&format!(" ({})", crate::text::one_line(r, 64)));
                }
                PodOutcome::Failed {
                    reason: reason::BUILD_FAILED,
                    message: m,
                    finished,
                }
            }
        }
        _ => match crate::pod_events::image_pull_failed(pod, CONTAINER) {
            Some((image, why)) => PodOutcome::Failed {
                reason: reason::EXECUTOR_IMAGE_PULL_FAILED,
                message: format!("the kubelet cannot pull the executor image {image}: {why}"),
                finished: None,
            },
            None => PodOutcome::Pending,
        },
    }
}

/// The executor container's memory limit, as written in the Pod.
fn memory_limit(pod: &Pod) -> Option<String> {
    let c = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)?;
    Some(
        c.resources
            .as_ref()?
            .limits
            .as_ref()?
            .get("memory")?
            .0
            .clone(),
    )
}

fn latest_condition_time(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .max()
}

/// The attempt the status says is current for the build's generation (1 for a new generation).
pub fn current_attempt(build: &ImageBuild) -> i32 {
    let generation = build.metadata.generation.unwrap_or(0);
    match &build.status {
        Some(s) if s.observed_generation == Some(generation) => s.attempts.unwrap_or(1).max(1),
        _ => 1,
    }
}

/// Name of the Pod of the current attempt.
pub fn current_pod_name(build: &ImageBuild) -> String {
    names::build_pod_name(
        &build.name_any(),
        build.metadata.generation.unwrap_or(0),
        current_attempt(build),
    )
}

/// Whether a Pod has ended by itself (phase Succeeded or Failed).
pub fn pod_ended(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a phase ends its generation: nothing runs again until the spec changes.
pub fn is_final(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        Some(Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    )
}

/// How many ended runs `status.history` keeps.
pub const HISTORY_LIMIT: usize = 10;

/// Adds `run` at the front of `history` (newest first), at most [`HISTORY_LIMIT`] kept; a run
/// already recorded is not added twice.
fn record(history: &mut Vec<RunRecord>, run: RunRecord) {
    if history
        .iter()
        .any(|h| h.generation == run.generation && h.result == run.result)
    {
        return;
    }
    history.insert(0, run);
    history.truncate(HISTORY_LIMIT);
}

/// The record of the run `st` describes, ended with `result`.
fn run_record(st: &ImageBuildStatus, result: Phase, reason: &str) -> Option<RunRecord> {
    Some(RunRecord {
        generation: st.observed_generation?,
        result,
        reason: Some(reason.to_string()),
        attempts: st.attempts,
        digest: st.image.as_ref().map(|i| i.digest.clone()),
        start_time: st.start_time.clone(),
        completion_time: st.completion_time.clone(),
    })
}

/// The status a new generation starts from: the conditions and the history carried over, the
/// previous generation's run recorded as ended by `why` (`Superseded`, `Cancelled`) when it was
/// still in progress.
fn new_generation_status(old: &ImageBuildStatus, why: &str, now: Timestamp) -> ImageBuildStatus {
    let mut history = old.history.clone();
    if matches!(old.phase, Some(Phase::Pending | Phase::Running)) {
        let mut run = old.clone();
        run.completion_time = Some(Time(now));
        run.image = None;
        if let Some(r) = run_record(&run, Phase::Cancelled, why) {
            record(&mut history, r);
        }
    }
    ImageBuildStatus {
        conditions: old.conditions.clone(),
        history,
        ..Default::default()
    }
}

/// A build waiting for a slot of the build queue: phase `Queued` with its place (`position` of
/// `waiting`) and the time it started waiting; nothing is created. The run of an earlier
/// generation still in progress is superseded as for any new generation.
pub fn plan_queued(
    build: &ImageBuild,
    position: usize,
    waiting: usize,
    limits: &str,
    now: Timestamp,
) -> Plan {
    let generation = build.metadata.generation.unwrap_or(0);
    let old = build.status.clone().unwrap_or_default();
    let same_gen = old.observed_generation == Some(generation);
    let queued_before = same_gen && old.phase == Some(Phase::Queued);
    let mut b = Builder {
        new: if queued_before {
            old.clone()
        } else {
            new_generation_status(&old, reason::SUPERSEDED, now)
        },
        old,
        generation,
        now,
        _build: build,
    };
    let m = format!("queued: {position} of {waiting} waiting for a build slot ({limits})");
    b.new.phase = Some(Phase::Queued);
    b.new.observed_generation = Some(generation);
    // A new object waits since its creation (whichever reconcile sees it first, all agree); a
    // later generation since the operator first saw it.
    let since = match (
        b.old.observed_generation,
        &build.metadata.creation_timestamp,
    ) {
        (None, Some(created)) => created.clone(),
        _ => Time(now),
    };
    b.new.queued_at = b.new.queued_at.clone().or(Some(since));
    b.new.queue_position = i32::try_from(position).ok();
    b.new.message = Some(m.clone());
    b.conditions(
        (Status::False, reason::QUEUED),
        (Status::Unknown, reason::QUEUED),
        &m,
    );
    Plan {
        event: (!queued_before).then_some(BuildEvent {
            warning: false,
            reason: reason::QUEUED,
            note: m,
        }),
        status: (b.new != b.old).then_some(b.new),
        // Positions move as others start; a start is also triggered when a slot frees.
        requeue: Some(QUEUE_RECHECK),
        ..Plan::nothing(!same_gen)
    }
}

/// How often a queued build looks at its place again (a freed slot wakes the next builds at
/// once; this only refreshes the positions shown).
pub const QUEUE_RECHECK: Duration = Duration::from_secs(30);

/// A build with `spec.cancel: true`: the Pods of earlier generations still running are
/// deleted (as for any new generation) and the build ends in phase `Cancelled`; nothing is
/// created. The run it stopped is recorded in the history as `Cancelled`.
pub fn plan_cancelled(build: &ImageBuild, obs: &Observation, now: Timestamp) -> Plan {
    let generation = build.metadata.generation.unwrap_or(0);
    let old = build.status.clone().unwrap_or_default();
    let same_gen = old.observed_generation == Some(generation);
    let mut plan = Plan::nothing(!same_gen);
    if let Some(pod) = &obs.pod {
        if !pod_ended(pod) {
            plan.delete_pod = Some(pod.name_any());
        }
    }
    if same_gen && old.phase == Some(Phase::Cancelled) {
        return plan;
    }
    let stopped = matches!(old.phase, Some(Phase::Pending | Phase::Running))
        .then(|| old.pod_name.clone())
        .flatten();
    let mut b = Builder {
        new: new_generation_status(&old, reason::CANCELLED, now),
        old,
        generation,
        now,
        _build: build,
    };
    let m = match stopped {
        Some(pod) => format!("cancelled by spec.cancel: executor Pod {pod} was stopped"),
        None => "cancelled by spec.cancel: nothing is built while it is true".to_string(),
    };
    b.new.phase = Some(Phase::Cancelled);
    b.new.observed_generation = Some(generation);
    b.new.completion_time = Some(Time(now));
    b.new.message = Some(m.clone());
    b.conditions(
        (Status::False, reason::CANCELLED),
        (Status::False, reason::CANCELLED),
        &m,
    );
    plan.event = Some(BuildEvent {
        warning: false,
        reason: reason::CANCELLED,
        note: m,
    });
    plan.status = Some(b.new);
    plan
}

struct Builder<'a> {
    old: ImageBuildStatus,
    new: ImageBuildStatus,
    generation: i64,
    now: Timestamp,
    _build: &'a ImageBuild,
}

impl Builder<'_> {
    fn conditions(&mut self, ready: (Status, &str), succeeded: (Status, &str), message: &str) {
        let c = conditions::set(
            &self.new.conditions,
            Desired {
                type_: conditions::READY,
                status: ready.0,
                reason: ready.1,
                message: message.to_string(),
            },
            Some(self.generation),
            self.now,
        );
        let c = conditions::set(
            &c,
            Desired {
                type_: conditions::SUCCEEDED,
                status: succeeded.0,
                reason: succeeded.1,
                message: message.to_string(),
            },
            Some(self.generation),
            self.now,
        );
        // kstatus: still working while Succeeded is Unknown, stalled once it is False.
        let progress = match succeeded.0 {
            Status::Unknown => conditions::Progress::InProgress,
            Status::False => conditions::Progress::Failed,
            Status::True => conditions::Progress::Done,
        };
        self.new.conditions =
            conditions::set_progress(&c, progress, Some(self.generation), self.now);
    }
}

/// The invalid-spec outcome: no Pod, status Failed with reason `InvalidSpec` (or `NotPermitted`
/// for an override the operator's configuration refuses).
pub fn plan_invalid(build: &ImageBuild, err: &InvalidSpec, now: Timestamp) -> Plan {
    let generation = build.metadata.generation.unwrap_or(0);
    let old = build.status.clone().unwrap_or_default();
    let why = err.reason();
    let message = if why == reason::NOT_PERMITTED {
        format!("not permitted: {err}")
    } else {
        format!("invalid spec: {err}")
    };
    let already = old.observed_generation == Some(generation)
        && old.phase == Some(Phase::Failed)
        && old.message.as_deref() == Some(message.as_str());
    let mut b = Builder {
        new: new_generation_status(&old, reason::SUPERSEDED, now),
        old,
        generation,
        now,
        _build: build,
    };
    b.new.phase = Some(Phase::Failed);
    b.new.observed_generation = Some(generation);
    b.new.message = Some(message.clone());
    b.new.completion_time = Some(Time(now));
    b.conditions((Status::False, why), (Status::False, why), &message);
    Plan {
        status: (!already).then_some(b.new),
        event: (!already).then_some(BuildEvent {
            warning: true,
            reason: why,
            note: message,
        }),
        ..Plan::nothing(b.old.observed_generation != Some(generation))
    }
}

/// Decides the next step of a valid build from what was observed.
pub fn plan(
    build: &ImageBuild,
    valid: &ValidSpec,
    obs: &Observation,
    cfg: &OperatorConfig,
    now: Timestamp,
) -> Plan {
    let generation = build.metadata.generation.unwrap_or(0);
    let old = build.status.clone().unwrap_or_default();
    let same_gen = old.observed_generation == Some(generation);
    let mut plan = Plan::nothing(!same_gen);
    if same_gen && is_final(old.phase) {
        // Finished: never rerun, whatever Pods exist or not.
        return plan;
    }
    let attempt = current_attempt(build);
    let pod_name = names::build_pod_name(&build.name_any(), generation, attempt);
    let mut b = Builder {
        new: if same_gen {
            old.clone()
        } else {
            new_generation_status(&old, reason::SUPERSEDED, now)
        },
        old,
        generation,
        now,
        _build: build,
    };
    b.new.observed_generation = Some(generation);
    b.new.attempts = Some(attempt);
    let start_time = |b: &Builder| b.new.start_time.clone().unwrap_or(Time(now));

    let outcome = match &obs.pod {
        Some(pod) => observe_pod(pod, cfg),
        None => {
            let created_before = same_gen
                && b.old.pod_name.as_deref() == Some(pod_name.as_str())
                && matches!(b.old.phase, Some(Phase::Pending | Phase::Running));
            if let Some(foreign) = &obs.foreign_pod {
                let m = format!(
                    "{foreign}, not by this ImageBuild, so the executor Pod cannot be created: \
                     delete or rename that Pod (the build starts once the name is free)"
                );
                b.new.phase = Some(Phase::Pending);
                b.new.message = Some(m.clone());
                b.conditions(
                    (Status::False, POD_NAME_CONFLICT),
                    (Status::Unknown, POD_NAME_CONFLICT),
                    &m,
                );
                if b.old
                    .conditions
                    .iter()
                    .all(|c| c.reason != POD_NAME_CONFLICT)
                {
                    plan.event = Some(BuildEvent {
                        warning: true,
                        reason: POD_NAME_CONFLICT,
                        note: m,
                    });
                }
                plan.requeue = Some(CONFLICT_RECHECK);
                if b.new != b.old {
                    plan.status = Some(b.new);
                }
                return plan;
            } else if created_before {
                PodOutcome::Failed {
                    reason: reason::POD_DELETED,
                    message: format!("the executor Pod {pod_name} was deleted before it finished"),
                    // Deleted while waiting for a retry: the attempt had already failed at the
                    // recorded time, so the backoff keeps counting from there.
                    finished: Some(b.old.completion_time.as_ref().map(|t| t.0).unwrap_or(now)),
                }
            } else {
                // Start this attempt.
                let m = format!("attempt {attempt}: executor Pod {pod_name} created");
                b.new.phase = Some(Phase::Pending);
                b.new.queue_position = None;
                b.new.pod_name = Some(pod_name.clone());
                b.new.start_time = Some(start_time(&b));
                b.new.message = Some(m.clone());
                b.conditions(
                    (Status::False, reason::BUILDING),
                    (Status::Unknown, reason::BUILDING),
                    &m,
                );
                plan.create_attempt = Some(attempt);
                plan.event = Some(BuildEvent {
                    warning: false,
                    reason: "Started",
                    note: m,
                });
                plan.status = Some(b.new);
                return plan;
            }
        }
    };
    b.new.pod_name = Some(pod_name.clone());
    b.new.start_time = Some(start_time(&b));
    // spec.timeout counts from the Pod's creation: a Pod that is never scheduled or never
    // pulls its image ends too (activeDeadlineSeconds, the kubelet's own limit, counts only
    // from the start, and stays as the backstop while the operator is away).
    let mut deadline_in = None;
    let outcome = match (outcome, valid.timeout, obs.pod.as_ref()) {
        (o @ (PodOutcome::Pending | PodOutcome::Running), Some(limit), Some(pod)) => {
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0);
            let waited = elapsed(Some(&Time(created)), now).unwrap_or_default();
            if waited >= limit {
                let limit_text = crate::duration::format(limit);
                match crate::pod_events::unschedulable(pod) {
                    Some(why) => PodOutcome::Failed {
                        reason: reason::UNSCHEDULABLE,
                        message: format!(
                            "no node was found for executor Pod {pod_name} within spec.timeout ({limit_text}): {why}"
                        ),
                        finished: Some(now),
                    },
                    None => PodOutcome::Failed {
                        reason: reason::TIMEOUT,
                        message: format!(
                            "the build exceeded spec.timeout ({limit_text}, counted from the creation of executor Pod {pod_name}) and was stopped"
                        ),
                        finished: Some(now),
                    },
                }
            } else {
                deadline_in = Some(limit - waited);
                o
            }
        }
        (o, ..) => o,
    };
    if let (PodOutcome::Failed { .. }, Some(pod)) = (&outcome, obs.pod.as_ref()) {
        if !pod_ended(pod) {
            plan.delete_pod = Some(pod_name.clone());
        }
    }
    match outcome {
        PodOutcome::Pending if obs.missing_secret.is_some() || obs.missing_secret_key.is_some() => {
            // The kubelet cannot mount the Secret, or a key of it (its FailedMount Event names
            // them). The Pod starts by itself once they exist; nothing is recreated.
            let m = match (&obs.missing_secret, &obs.missing_secret_key) {
                (Some(secret), _) => missing_secret_message(build, secret, &pod_name),
                (None, Some(key)) => missing_key_message(build, key, &pod_name),
                (None, None) => unreachable!("guarded above"),
            };
            b.new.phase = Some(Phase::Pending);
            b.new.message = Some(m.clone());
            b.conditions(
                (Status::False, reason::SECRET_NOT_FOUND),
                (Status::Unknown, reason::SECRET_NOT_FOUND),
                &m,
            );
            if b.old
                .conditions
                .iter()
                .all(|c| c.reason != reason::SECRET_NOT_FOUND)
            {
                plan.event = Some(BuildEvent {
                    warning: true,
                    reason: reason::SECRET_NOT_FOUND,
                    note: m,
                });
            }
        }
        PodOutcome::Pending | PodOutcome::Running => {
            let running = outcome == PodOutcome::Running;
            let mut m = format!(
                "attempt {attempt}: executor Pod {pod_name} is {}",
                if running { "running" } else { "pending" }
            );
            let mut why_waiting = reason::BUILDING;
            if let Some(why) = obs
                .pod
                .as_ref()
                .and_then(|p| crate::pod_events::stuck_container(p, CONTAINER))
            {
                m.push_str(": ");
                m.push_str(&why);
            } else if let Some(why) = obs.pod.as_ref().and_then(crate::pod_events::unschedulable) {
                m.push_str(": no node fits it yet: ");
                m.push_str(&why);
                why_waiting = reason::UNSCHEDULABLE;
            }
            b.new.phase = Some(if running {
                Phase::Running
            } else {
                Phase::Pending
            });
            b.new.message = Some(m.clone());
            b.conditions(
                (Status::False, why_waiting),
                (Status::Unknown, why_waiting),
                &m,
            );
            // Nothing to poll while the Pod has not started: the Pod watch sees its status
            // (image pulls, scheduling) and the Event watch the kubelet's FailedMount Warnings.
        }
        PodOutcome::Succeeded { result, finished } => {
            let done = finished.unwrap_or(now);
            let refs = if result.references.is_empty() {
                result.digest.clone()
            } else {
                result.references.join(", ")
            };
            let m = format!("pushed {refs}");
            b.new.phase = Some(Phase::Succeeded);
            b.new.completion_time = Some(Time(done));
            b.new.image = Some(BuiltImage {
                digest: result.digest,
                references: result.references,
                size: result.size.and_then(|s| i64::try_from(s).ok()),
            });
            b.new.source = result.commit.map(|commit| SourceStatus {
                commit: Some(commit),
            });
            b.new.cache = result.cache.map(|c| CacheStatus {
                hits: i64::try_from(c.hits).unwrap_or(i64::MAX),
                misses: i64::try_from(c.misses).unwrap_or(i64::MAX),
            });
            b.new.message = Some(m.clone());
            b.conditions(
                (Status::True, reason::PUSHED),
                (Status::True, reason::PUSHED),
                &m,
            );
            if let Some(r) = run_record(&b.new, Phase::Succeeded, reason::PUSHED) {
                record(&mut b.new.history, r);
            }
            plan.event = Some(BuildEvent {
                warning: false,
                reason: "Succeeded",
                note: m,
            });
            plan.finished = Some((true, elapsed(b.new.start_time.as_ref(), done)));
        }
        PodOutcome::Failed {
            reason: why,
            message,
            finished,
        } => {
            let failed_at = finished.unwrap_or(now);
            if attempt <= valid.retries {
                let next = attempt + 1;
                let wait = cfg.backoff(next);
                let waited = elapsed(Some(&Time(failed_at)), now).unwrap_or_default();
                if waited >= wait {
                    let next_pod = names::build_pod_name(&build.name_any(), generation, next);
                    let m = format!("attempt {attempt} failed ({why}); attempt {next}: executor Pod {next_pod} created");
                    b.new.phase = Some(Phase::Pending);
                    b.new.completion_time = None;
                    b.new.attempts = Some(next);
                    b.new.pod_name = Some(next_pod);
                    b.new.message = Some(m.clone());
                    b.conditions(
                        (Status::False, why),
                        (Status::Unknown, reason::RETRYING),
                        &m,
                    );
                    plan.create_attempt = Some(next);
                    plan.event = Some(BuildEvent {
                        warning: true,
                        reason: reason::RETRYING,
                        note: format!("{m}\n{message}"),
                    });
                } else {
                    let left = wait - waited;
                    let m = format!(
                        "attempt {attempt} failed ({why}); retrying in {}:\n{message}",
                        crate::duration::format(left + Duration::from_millis(999))
                    );
                    b.new.phase = Some(Phase::Pending);
                    b.new.message = Some(m.clone());
                    b.conditions(
                        (Status::False, why),
                        (Status::Unknown, reason::RETRYING),
                        &m,
                    );
                    // The failed attempt's end, kept until the next attempt starts.
                    b.new.completion_time = Some(Time(failed_at));
                    plan.requeue = Some(left);
                }
            } else {
                let m = if attempt > 1 {
                    format!("attempt {attempt} of {attempt} failed ({why}): {message}")
                } else {
                    message.clone()
                };
                b.new.phase = Some(Phase::Failed);
                b.new.completion_time = Some(Time(failed_at));
                b.new.message = Some(m.clone());
                b.conditions((Status::False, why), (Status::False, why), &m);
                if let Some(r) = run_record(&b.new, Phase::Failed, why) {
                    record(&mut b.new.history, r);
                }
                plan.event = Some(BuildEvent {
                    warning: true,
                    reason: "Failed",
                    note: m,
                });
                plan.finished = Some((false, elapsed(b.new.start_time.as_ref(), failed_at)));
            }
        }
    }
    // Come back when spec.timeout passes, whatever else happens (or not) before.
    if let Some(left) = deadline_in {
        plan.requeue = Some(plan.requeue.map_or(left, |r| r.min(left)));
    }
    if b.new != b.old {
        plan.status = Some(b.new);
    }
    plan
}

fn elapsed(from: Option<&Time>, to: Timestamp) -> Option<Duration> {
    let from = from?.0;
    let secs = to.as_millisecond().checked_sub(from.as_millisecond())?;
    u64::try_from(secs).ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests;

/// What a missing Secret keeps from starting, and what to create: the push Secret (a
/// dockerconfigjson one) or the build secrets referring to it (by id and key). Names only.
fn missing_secret_message(build: &ImageBuild, secret: &str, pod_name: &str) -> String {
    let ns = build.namespace().unwrap_or_default();
    let push = build.spec.push_secret.as_deref() == Some(secret);
    let uses: Vec<String> = build
        .spec
        .secrets
        .iter()
        .filter(|s| s.secret_key_ref.name == secret)
        .map(|s| format!("id {} from key {:?}", s.id, s.secret_key_ref.key))
        .collect();
    let git = build
        .spec
        .source
        .git
        .as_ref()
        .and_then(|g| g.secret_ref.as_ref())
        .is_some_and(|r| r.name == secret);
    if git && !push && uses.is_empty() {
        return format!(
            "git Secret {secret:?} of spec.source.git.secretRef does not exist in namespace {ns}, \
             so the kubelet cannot start executor Pod {pod_name}: create it with the key token, \
             or username and password (the build starts once it exists)"
        );
    }
    let what = match (push, uses.is_empty()) {
        (true, true) => format!(
            "push Secret {secret:?} does not exist in namespace {ns}, so the kubelet cannot \
             start executor Pod {pod_name}: create a kubernetes.io/dockerconfigjson Secret with \
             that name"
        ),
        (_, false) => format!(
            "{}Secret {secret:?} of spec.secrets ({}) does not exist in namespace {ns}, so the \
             kubelet cannot start executor Pod {pod_name}: create a Secret with that name and \
             those keys",
            if push { "push and build " } else { "build " },
            uses.join(", ")
        ),
        (false, true) => format!(
            "Secret {secret:?} does not exist in namespace {ns}, so the kubelet cannot start \
             executor Pod {pod_name}: create it"
        ),
    };
    format!("{what} (the build starts once it exists)")
}

/// What a missing key of an existing Secret keeps from starting: a build secret's key (found by
/// the volume the kubelet names) or the push Secret's `.dockerconfigjson`. Names only.
fn missing_key_message(
    build: &ImageBuild,
    missing: &crate::pod_events::MissingKey,
    pod_name: &str,
) -> String {
    let ns = build.namespace().unwrap_or_default();
    let key = &missing.key;
    let what = match super::run_mounts::secret_of_volume(&build.spec, &missing.volume) {
        Some(s) => format!(
            "build Secret {:?} of spec.secrets (id {}) has no key {key:?}",
            s.secret_key_ref.name, s.id
        ),
        None => match build.spec.push_secret.as_deref() {
            Some(push) if key == ".dockerconfigjson" => format!(
                "push Secret {push:?} has no key \".dockerconfigjson\": it must be a \
                 kubernetes.io/dockerconfigjson Secret"
            ),
            _ => format!("a Secret of volume {:?} has no key {key:?}", missing.volume),
        },
    };
    format!(
        "{what} in namespace {ns}, so the kubelet cannot start executor Pod {pod_name}: add the \
         key to the Secret or change the reference (the build starts once it exists)"
    )
}
