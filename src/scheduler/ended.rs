//! The end of a job: its watcher counts what it did, learns from a refused prompt (and plans the
//! job again), notices an engine that crashed, records a finished place, and starts the
//! idle-time work after an asked job (`idle.rs`), counted while it runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::idle::JobKind;
use super::slot::ActiveJob;
use super::Scheduler;
use crate::engine::JobOutcome;

impl Scheduler {
    /// When the job ends: counts its tokens, updates the speed average and, after a job the
    /// user asked for, starts the idle work.
    pub(super) fn watch_job(&self, active: &Arc<ActiveJob>, kind: JobKind) {
        let (Some(scheduler), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else { return };
        let mut progress = active.job.subscribe();
        let origin = active.clone();
        runtime.spawn(async move {
            let ended = progress.wait_for(|progress| progress.done.is_some()).await.map(|progress| progress.clone());
            // A job whose engine crashed fails (or loses its sender, queued behind the crash).
            if !matches!(&ended, Ok(progress) if matches!(progress.outcome(), JobOutcome::Finished(_) | JobOutcome::Interrupted(_))) {
                scheduler.notice_crash();
            }
            let Ok(progress) = ended else { return };
            // A prompt refused as too long is planned again with the density it measured, if
            // the user is still there; the replacement counts as started before this job ends.
            if scheduler.densities.learn(&origin) {
                scheduler.replace_refused(&origin);
            }
            if let JobOutcome::Finished(completion) = progress.outcome() {
                scheduler.places.finished(&origin.place, origin.arrival, &origin.prompt, completion);
            }
            // Idle work is counted before the job counts as ended, so no one sees the server
            // idle between the two.
            if kind == JobKind::Asked {
                scheduler.spawn_idle_work(origin);
            }
            let mut stats = scheduler.stats_mut();
            stats.counters.jobs_ended += 1;
            if let Some(Ok(completion)) = &progress.done {
                stats.counters.tokens_reused += completion.reused_tokens as u64;
                stats.counters.tokens_decoded += completion.decoded_tokens as u64;
                stats.counters.tokens_generated += completion.generated_tokens as u64;
                stats.counters.generation_ms += completion.generation_ms;
                stats.counters.tokens_drafted += completion.drafted_tokens as u64;
                stats.counters.drafts_accepted += completion.accepted_draft_tokens as u64;
                stats.counters.tokens_restored += completion.restored_tokens as u64;
                stats.counters.tokens_shifted += completion.shifted_tokens as u64;
                drop(stats);
                scheduler.speed.record(completion);
            }
        });
    }

    /// Runs the idle-time work after `origin`, counted in `idle_work` from this call on.
    pub(super) fn spawn_idle_work(&self, origin: Arc<ActiveJob>) {
        let (Some(scheduler), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else { return };
        self.idle_work.fetch_add(1, Ordering::SeqCst);
        runtime.spawn(async move {
            // Counted down however the work ends: a panic in it must not leave the server
            // looking busy for ever.
            let _counted = IdleWorkCount(scheduler.clone());
            scheduler.idle_work_after(origin).await;
        });
    }
}

/// The test fault (`crate::engine::test_fault`) that makes idle work panic.
pub(super) const IDLE_PANIC_MARKER: &str = "ghostline-test-fault: panic in idle work";

/// One round of idle work in `idle_work`, counted down when dropped.
struct IdleWorkCount(Arc<Scheduler>);

impl Drop for IdleWorkCount {
    fn drop(&mut self) {
        self.0.idle_work.fetch_sub(1, Ordering::SeqCst);
    }
}
