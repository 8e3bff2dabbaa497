//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! only one reconciles. Written here on plain `kube` calls because no maintained crate fits
//! kube 5; the protocol is client-go's: take the Lease when it is free or expired, renew it
//! well before it expires, and write it only with the `resourceVersion` read (optimistic
//! concurrency), so two candidates can never both win the same term.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election Lease {namespace}/{name}: {source}; check RBAC for leases (get, create, update)")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the leader Lease {namespace}/{name} (not renewed within {lease:?}); stopping so another replica takes over")]
    Lost {
        namespace: String,
        name: String,
        lease: Duration,
    },
}

/// Timing of the election, like client-go's LeaderElectionConfig.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (Pod name plus a random part).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews and a candidate retries.
    pub retry_period: Duration,
}

/// Where a candidate reads the wall-clock time it writes into the Lease and judges expiry by.
/// A seam so tests can see a Lease expire without sleeping through its duration; everything
/// else uses [`SystemClock`].
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// One candidate's handle on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    cfg: LeaseConfig,
    clock: Arc<dyn Clock>,
}

impl LeaseLock {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self::with_clock(client, cfg, Arc::new(SystemClock))
    }

    /// A candidate that reads the time from `clock` instead of the system clock.
    pub fn with_clock(client: Client, cfg: LeaseConfig, clock: Arc<dyn Clock>) -> Self {
        LeaseLock {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            clock,
        }
    }

    fn now_micro(&self) -> MicroTime {
        MicroTime(self.clock.now())
    }

    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Kube {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            source,
        }
    }

    fn lease_secs(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Takes the Lease if free or expired, renews it if held; `Ok(true)` when this candidate
    /// holds it afterwards. A conflict (someone else wrote first) is `Ok(false)`, not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        let me = &self.cfg.identity;
        let existing = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(self.lease_secs()),
                    acquire_time: Some(self.now_micro()),
                    renew_time: Some(self.now_micro()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(me.as_str());
        if !held_by_me && holder.is_some() {
            let duration = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
            );
            let renewed = spec
                .renew_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH);
            let age_ms = self.clock.now().as_millisecond() - renewed.as_millisecond();
            if age_ms < i64::try_from(duration.as_millis()).unwrap_or(i64::MAX) {
                return Ok(false);
            }
        }
        if !held_by_me {
            spec.acquire_time = Some(self.now_micro());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me.clone());
        spec.lease_duration_seconds = Some(self.lease_secs());
        spec.renew_time = Some(self.now_micro());
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the Lease up (on graceful shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Waits for leadership, then runs `work` (handing it a future that resolves when it must
    /// stop) while renewing. Returns when `shutdown` resolves (after `work` finished and the
    /// Lease was released), or with [`LeaderError::Lost`] when renewal failed for a whole lease
    /// duration (after `work` finished).
    pub async fn run<W, WF>(
        &self,
        shutdown: impl Future<Output = ()>,
        work: W,
    ) -> Result<(), LeaderError>
    where
        W: FnOnce(tokio::sync::watch::Receiver<bool>) -> WF,
        WF: Future<Output = ()> + Send + 'static,
    {
        tokio::pin!(shutdown);
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
        info!(identity = %self.cfg.identity, lease = %self.cfg.name, "became leader");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut handle = tokio::spawn(work(stop_rx));
        let mut last_renew = tokio::time::Instant::now();
        let outcome = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                _ = &mut handle => break Ok(()),
                () = tokio::time::sleep(self.cfg.retry_period) => {
                    match self.try_acquire_or_renew().await {
                        Ok(true) => last_renew = tokio::time::Instant::now(),
                        Ok(false) => break Err(self.lost()),
                        Err(e) => {
                            warn!(error = %e, "could not renew the leader Lease");
                            // Stop before the Lease can expire, so another leader never overlaps.
                            if last_renew.elapsed() + self.cfg.retry_period >= self.cfg.lease_duration {
                                break Err(self.lost());
                            }
                        }
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        if !handle.is_finished() {
            let _ = handle.await;
        }
        if outcome.is_ok() {
            if let Err(e) = self.release().await {
                warn!(error = %e, "could not release the leader Lease");
            }
        }
        outcome
    }

    fn lost(&self) -> LeaderError {
        LeaderError::Lost {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            lease: self.cfg.lease_duration,
        }
    }
}
