//! What the scheduler remembers between keys: the latest change (debouncing and the budget count
//! from it), and per document the text density a refused prompt measured.

use super::*;
use crate::sync::MutexExt;

/// The latest change: its document, version and instant, and a count of changes (debouncing
/// compares it).
#[derive(Default)]
pub(super) struct Keystrokes {
    pub(super) latest: Mutex<Option<(String, i32, Instant)>>,
    pub(super) count: AtomicU64,
}

impl Keystrokes {
    /// Records a change; returns the previous one's instant and this change's number.
    pub(super) fn record(&self, uri: &str, version: i32, at: Instant) -> (Option<Instant>, u64) {
        let previous = self.latest.locked().replace((uri.to_string(), version, at));
        (previous.map(|(_, _, at)| at), self.count.fetch_add(1, Ordering::SeqCst) + 1)
    }

    pub(super) fn latest_count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The instant of the change that made this version, or now for one not seen.
    pub(super) fn instant_of(&self, uri: &str, version: i32) -> Instant {
        match &*self.latest.locked() {
            Some((latest_uri, latest_version, at)) if latest_uri == uri && *latest_version == version => *at,
            _ => Instant::now(),
        }
    }

    /// Whether this version of this document is the latest change.
    pub(super) fn is_latest(&self, uri: &str, version: i32) -> bool {
        matches!(&*self.latest.locked(), Some((latest_uri, latest_version, _)) if latest_uri == uri && *latest_version == version)
    }

    pub(super) fn since_latest(&self) -> Duration {
        match &*self.latest.locked() {
            Some((_, _, at)) => at.elapsed(),
            None => Duration::MAX,
        }
    }
}

/// Per document, the characters per token that a refused prompt measured (text denser than a
/// budget assumes, such as digits); its next plans are budgeted with it.
#[derive(Default)]
pub(super) struct Densities {
    pub(super) by_uri: Mutex<std::collections::HashMap<String, f64>>,
}

impl Densities {
    pub(super) fn get(&self, uri: &str) -> Option<f64> {
        self.by_uri.locked().get(uri).copied()
    }

    /// Learns from a job that ended; whether its prompt was refused as too long (so the job is
    /// worth planning again).
    pub(super) fn learn(&self, job: &ActiveJob) -> bool {
        let receiver = job.job.subscribe();
        let progress = receiver.borrow();
        let crate::engine::JobOutcome::Failed(err) = progress.outcome() else { return false };
        let Some(density) = crate::plan::density_after(err, &job.prompt) else { return false };
        let mut by_uri = self.by_uri.locked();
        let known = by_uri.entry(job.state.uri.clone()).or_insert(f64::MAX);
        if density < *known {
            *known = density;
            tracing::info!(uri = %job.state.uri, chars_per_token = density, %err, "the prompt was too long for the context; planning again with the measured density");
        }
        true
    }
}
