//! Claims: a trial that any machine sharing the remote is executing is not executed
//! again elsewhere ("never twice").
//!
//! Before an action runs, its executor creates the claim `<key>.<generation>` on the
//! remote with create-if-absent semantics (S3: `PUT` with `If-None-Match: *`; HTTP:
//! WebDAV `MKCOL`). The one whose create succeeds owns the action: it writes a lease
//! into the claim and renews it (a heartbeat every third of the lease) until the
//! action is done, then marks it released. Everyone else waits, polling the remote
//! action cache, and uses the entry once it appears. A lease that has not changed for
//! a whole lease period, as timed by the waiter's own clock (no clock is compared
//! across machines), or one marked released without an entry (the owner failed or was
//! interrupted) is taken over by creating the next generation, which again only one
//! waiter can do. A remote that cannot create only-if-absent (probed once per process)
//! or that stops answering means no claims: actions run, as without a remote.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Tier;
use crate::{ActionCache, Manifest, StageKey};

/// How often a waiter looks at the remote again.
const POLL: Duration = Duration::from_millis(200);

/// The lease period: `PIPE_CLAIM_LEASE_SECS`, 60 seconds by default.
fn lease_period() -> Duration {
    let secs = std::env::var("PIPE_CLAIM_LEASE_SECS").ok().and_then(|text| text.parse::<f64>().ok());
    Duration::from_secs_f64(secs.filter(|secs| *secs > 0.0).unwrap_or(60.0))
}

/// What an executor should do with an action.
#[derive(Debug)]
pub enum Claimed {
    /// Execute it; the guard (when a claim was taken) is held until the result is stored.
    Run(Option<ClaimGuard>),
    /// Another claimant executed it: its entry and objects are now in the local cache.
    Done(Manifest),
    /// Cancelled while waiting.
    Cancelled,
}

/// The content of a claim: who holds it and a counter the heartbeat moves.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    owner: String,
    stage: String,
    beat: u64,
    released: bool,
}

/// A held claim: renewed in the background, released on drop.
#[derive(Debug)]
pub struct ClaimGuard {
    tier: Arc<Tier>,
    name: String,
    lease: Lease,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<std::thread::JoinHandle<u64>>,
}

impl ClaimGuard {
    fn start(tier: Arc<Tier>, name: String, stage: &str) -> ClaimGuard {
        let lease = Lease { owner: owner(), stage: stage.to_string(), beat: 0, released: false };
        write(&tier, &name, &lease);
        let (stop, stopped) = mpsc::channel::<()>();
        let heartbeat = {
            let (tier, name, mut lease) = (tier.clone(), name.clone(), lease.clone());
            let every = lease_period() / 3;
            std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    lease.beat += 1;
                    write(&tier, &name, &lease);
                }
                lease.beat
            })
        };
        ClaimGuard { tier, name, lease, stop: Some(stop), heartbeat: Some(heartbeat) }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(beat) = self.heartbeat.take().and_then(|thread| thread.join().ok()) {
            self.lease.beat = beat + 1;
        }
        self.lease.released = true;
        write(&self.tier, &self.name, &self.lease);
    }
}

fn write(tier: &Tier, name: &str, lease: &Lease) {
    if let Ok(bytes) = serde_json::to_vec(lease) {
        tier.call(|remote| remote.put_claim(name, &bytes));
    }
}

/// This process, for leases (no host name, nothing secret).
fn owner() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

/// Whether the remote creates claims only when absent: a fresh name must be created,
/// and creating it again must say it exists. Asked once per process.
fn supported(tier: &Tier) -> bool {
    *tier.claims.get_or_init(|| {
        // Straight to the backend: a server refusing the probe (403, 501) has no claims
        // but may serve the cache all the same, so it is not switched off for this.
        let name = format!("probe-{}", owner());
        let first = tier.backend.create_claim(&name);
        let second = first.is_ok().then(|| tier.backend.create_claim(&name));
        if first.is_ok() {
            tier.backend.remove_claim(&name);
        }
        let why = match (first, second) {
            (Ok(true), Some(Ok(false))) => return true,
            (Err(error), _) | (_, Some(Err(error))) => error.to_string(),
            _ => "it does not create objects only if absent (S3: If-None-Match; WebDAV: MKCOL)".to_string(),
        };
        tracing::warn!(
            remote = %tier.describe(),
            "no claims on the remote cache ({why}): concurrent builds may execute the same action twice"
        );
        false
    })
}

impl ActionCache {
    /// Claims `key` on the remote before executing it (see the module text); without a
    /// remote, or with one that cannot hold claims, says to run.
    pub fn claim(&self, key: &StageKey, stage: &str, cancelled: &dyn Fn() -> bool) -> Claimed {
        let Some(tier) = self.remote_tier() else { return Claimed::Run(None) };
        if tier.down.load(std::sync::atomic::Ordering::SeqCst) || !supported(&tier) {
            return Claimed::Run(None);
        }
        let lease = lease_period();
        let mut generation = 0u64;
        // The lease last seen in `generation` and since when (this machine's clock).
        let mut seen: Option<(u64, Vec<u8>, Instant)> = None;
        loop {
            if cancelled() {
                return Claimed::Cancelled;
            }
            if let Some(manifest) = self.fetch(key) {
                return Claimed::Done(manifest);
            }
            let name = format!("{}.{generation}", key.to_hex());
            match tier.call(|remote| remote.create_claim(&name)) {
                None => return Claimed::Run(None),
                Some(true) => {
                    let guard = ClaimGuard::start(tier.clone(), name, stage);
                    // The previous holder may have finished between our look and our claim.
                    return match self.fetch(key) {
                        Some(manifest) => Claimed::Done(manifest),
                        None => Claimed::Run(Some(guard)),
                    };
                }
                Some(false) => {}
            }
            let next = format!("{}.{}", key.to_hex(), generation + 1);
            match tier.call(|remote| remote.get_claim(&next)) {
                None => return Claimed::Run(None),
                Some(Some(_)) => {
                    generation += 1;
                    continue;
                }
                Some(None) => {}
            }
            let Some(body) = tier.call(|remote| remote.get_claim(&name)) else { return Claimed::Run(None) };
            let body = body.unwrap_or_default();
            let released = serde_json::from_slice::<Lease>(&body).is_ok_and(|lease| lease.released);
            let stale = match &seen {
                Some((at, last, since)) if *at == generation && *last == body => since.elapsed() >= lease,
                _ => {
                    seen = Some((generation, body, Instant::now()));
                    false
                }
            };
            if released || stale {
                tracing::info!(key = %key.short(), %stage, released, "taking over a claim its holder gave up");
                generation += 1;
                continue;
            }
            std::thread::sleep(POLL);
        }
    }
}
