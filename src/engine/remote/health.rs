//! Whether the server is usable: failures, outages left alone for a while, the health checks
//! that end them, and the counts `ghostline/stats` shows.

use super::*;
use crate::sync::MutexExt;

/// What the remote backend has done, for `ghostline/stats`.
#[derive(Default)]
pub struct Status {
    pub remote_jobs: AtomicU64,
    pub fallback_jobs: AtomicU64,
    pub remote_failures: AtomicU64,
    pub(super) last_error: Mutex<Option<String>>,
    /// Moving average of the time to the first streamed piece, in microseconds (0: none yet).
    pub(super) first_piece_us: AtomicU64,
    pub(super) down_until: Mutex<Option<Instant>>,
    /// A health-check thread runs.
    pub(super) probing: AtomicBool,
    /// Outages a health check ended.
    pub recoveries: AtomicU64,
}

impl Status {
    /// Counts a failure and leaves the server alone for a while; logged once per outage.
    pub(super) fn failed(&self, err: &RemoteError) {
        self.remote_failures.fetch_add(1, Ordering::Relaxed);
        let message = err.to_string();
        let repeated = self.last_error.locked().replace(message.clone()) == Some(message);
        let mut down_until = self.down_until.locked();
        if repeated && down_until.is_some() {
            tracing::debug!(%err, "the remote backend failed again");
        } else {
            tracing::warn!(%err, "the remote backend failed");
        }
        *down_until = Some(Instant::now() + DOWN_FOR);
    }

    /// A request streamed to its end: the outage, if any, is over.
    pub(super) fn succeeded(&self) {
        self.remote_jobs.fetch_add(1, Ordering::Relaxed);
        *self.down_until.locked() = None;
    }

    /// While the server is down after a failure, checks its health every `HEALTH_EVERY` on a
    /// thread of its own (one at a time), and ends the outage as soon as it answers, so jobs go
    /// back to it without one of them trying a dead server first.
    pub(super) fn watch_health(status: &Arc<Status>, config: &Arc<RemoteConfig>, agent: &ureq::Agent) {
        if status.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (watched, config, agent) = (Arc::downgrade(status), config.clone(), agent.clone());
        let url = format!("{}{}", config.url.trim_end_matches('/'), config.api.health_path());
        let spawned = std::thread::Builder::new().name("ghostline-health".to_string()).spawn(move || loop {
            std::thread::sleep(HEALTH_EVERY);
            // The engine is gone, or a job found the server back: nothing to watch.
            let Some(status) = watched.upgrade() else { return };
            if status.down_until.locked().is_none() {
                status.probing.store(false, Ordering::SeqCst);
                return;
            }
            let mut request = agent.get(&url).timeout(Duration::from_millis(config.timeout_ms.min(2000)));
            if let Some(key) = config.api_key_env.as_ref().and_then(|variable| std::env::var(variable).ok()) {
                request = request.set("Authorization", &format!("Bearer {key}"));
            }
            if request.call().is_ok_and(|response| response.status() == 200) {
                *status.down_until.locked() = None;
                status.recoveries.fetch_add(1, Ordering::Relaxed);
                status.probing.store(false, Ordering::SeqCst);
                tracing::info!(url = %config.url, "the remote backend answers its health check again");
                return;
            }
        });
        if let Err(err) = spawned {
            tracing::warn!(%err, "cannot start the health check thread");
            status.probing.store(false, Ordering::SeqCst);
        }
    }

    pub(super) fn first_piece(&self, elapsed: Duration) {
        let measured = elapsed.as_micros() as u64;
        let previous = self.first_piece_us.load(Ordering::Relaxed);
        let average = if previous == 0 { measured } else { (previous * 7 + measured * 3) / 10 };
        self.first_piece_us.store(average.max(1), Ordering::Relaxed);
    }

    /// Whether a job should go to the server now: it has not failed recently, and (when a
    /// fallback can answer) it has not been slower than `slow_ms` of late.
    pub(super) fn remote_usable(&self, config: &RemoteConfig) -> bool {
        let mut down_until = self.down_until.locked();
        if let Some(until) = *down_until {
            if Instant::now() < until {
                return false;
            }
            // Time for a health check: this job tries the server again.
            *down_until = None;
            if config.fallback_local && self.first_piece_us.load(Ordering::Relaxed) > config.slow_ms * 1000 {
                // A fresh chance for a server that was only slow.
                self.first_piece_us.store(0, Ordering::Relaxed);
            }
            return true;
        }
        if config.fallback_local && self.first_piece_us.load(Ordering::Relaxed) > config.slow_ms * 1000 {
            *down_until = Some(Instant::now() + DOWN_FOR);
            return false;
        }
        true
    }

    pub fn to_json(&self, config: &RemoteConfig) -> Value {
        let first_piece_us = self.first_piece_us.load(Ordering::Relaxed);
        json!({
            "kind": config.api.name(),
            "url": config.url,
            "model": config.model,
            "template": if config.infill { "server (/infill)" } else { config.template.name.as_str() },
            "fallback": if config.fallback_local { "local" } else { "none" },
            "remoteJobs": self.remote_jobs.load(Ordering::Relaxed),
            "fallbackJobs": self.fallback_jobs.load(Ordering::Relaxed),
            "remoteFailures": self.remote_failures.load(Ordering::Relaxed),
            "lastError": *self.last_error.locked(),
            "firstPieceMs": (first_piece_us > 0).then(|| first_piece_us as f64 / 1000.0),
            "healthRecoveries": self.recoveries.load(Ordering::Relaxed),
            "usingFallback": config.fallback_local && self.down_until.locked().is_some_and(|until| Instant::now() < until),
        })
    }
}
