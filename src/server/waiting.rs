//! Completion requests that wait for a suggestion hold one of the protocol layer's slots each:
//! past `MAX_WAITING_REQUESTS` of them, the oldest is told to answer (empty) at once, so
//! `$/cancelRequest`, `ghostline/stats` and new keystrokes always find a free slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Backend;
use crate::scheduler::{Answer, CursorState, EmptyReason, ReadyWaiter, Waiting};
use crate::sync::MutexExt;

/// Completion requests that may wait for a suggestion at once (each holds one of the protocol
/// layer's `MAX_CONCURRENCY` slots).
const MAX_WAITING_REQUESTS: usize = 32;

/// The completion requests waiting for a suggestion, oldest first.
#[derive(Default)]
pub(super) struct WaitingRequests {
    next_id: AtomicU64,
    queue: Mutex<std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>>,
}

/// One waiting request's place in the queue; leaving the queue when dropped.
struct WaitTicket<'a> {
    id: u64,
    preempted: Arc<tokio::sync::Notify>,
    requests: &'a WaitingRequests,
}

impl WaitingRequests {
    /// Joins the queue; past `MAX_WAITING_REQUESTS`, the oldest waiting request is told to
    /// answer now.
    fn enter(&self) -> WaitTicket<'_> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let preempted = Arc::new(tokio::sync::Notify::new());
        let mut queue = self.queue.locked();
        queue.push_back((id, preempted.clone()));
        while queue.len() > MAX_WAITING_REQUESTS {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.notify_one();
            }
        }
        WaitTicket { id, preempted, requests: self }
    }
}

impl Drop for WaitTicket<'_> {
    fn drop(&mut self) {
        self.requests.queue.locked().retain(|(id, _)| *id != self.id);
    }
}

impl Backend {
    /// The scheduler's answer for a state, unless the request is preempted (too many waiting).
    pub(super) async fn answer_bounded(&self, state: CursorState, waiting: Waiting) -> (Answer, Option<ReadyWaiter>) {
        let ticket = self.waiting_requests.enter();
        tokio::select! {
            answer = self.scheduler.complete(state, waiting) => answer,
            _ = ticket.preempted.notified() => (Answer::Empty(EmptyReason::TooManyWaiting), None),
        }
    }
}


#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn past_the_limit_the_oldest_waiting_request_is_told_to_answer() {
        let requests = WaitingRequests::default();
        let tickets: Vec<WaitTicket> = (0..MAX_WAITING_REQUESTS + 2).map(|_| requests.enter()).collect();
        let told: Vec<bool> = tickets.iter().map(|ticket| ticket.preempted.notified().now_or_never().is_some()).collect();
        assert_eq!(told.iter().filter(|told| **told).count(), 2, "{told:?}");
        assert!(told[0] && told[1] && !told[2], "the oldest two: {told:?}");
        drop(tickets);
        assert!(requests.queue.lock().unwrap().is_empty(), "tickets leave the queue when dropped");
    }

}
