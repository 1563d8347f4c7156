//! One named thread for work that must stay off the LSP loop (parsing syntax trees), where only
//! the latest request of a kind matters: a newer task with the same key replaces the queued one
//! (it would redo the same work on older text). The thread count stays one however fast the
//! keystrokes come, and the queue holds at most one task per key.
//!
//! Invariants: tasks run one at a time, in the order their keys were first queued; a replaced
//! task is dropped without running; dropping the handle stops the thread after its current task.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex};
use crate::sync::MutexExt;

type Task = Box<dyn FnOnce() + Send>;

struct Queue<K> {
    order: VecDeque<K>,
    tasks: HashMap<K, Task>,
    stopped: bool,
}

pub struct LatestWins<K> {
    shared: Arc<(Mutex<Queue<K>>, Condvar)>,
}

impl<K: Eq + Hash + Clone + Send + 'static> LatestWins<K> {
    /// Starts the thread; `name` is the thread's name.
    pub fn start(name: &str) -> LatestWins<K> {
        let shared = Arc::new((Mutex::new(Queue { order: VecDeque::new(), tasks: HashMap::new(), stopped: false }), Condvar::new()));
        let worker = shared.clone();
        let spawned = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            crate::priority::lower_this_thread();
            let (queue, ready) = &*worker;
            loop {
                let task = {
                    let mut queue = queue.locked();
                    loop {
                        if queue.stopped {
                            return;
                        }
                        if let Some(key) = queue.order.pop_front() {
                            if let Some(task) = queue.tasks.remove(&key) {
                                break task;
                            }
                            continue;
                        }
                        queue = ready.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                };
                // A panicking task (a parser bug) must not end the thread for every later task.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)).is_err() {
                    tracing::error!("a background task panicked");
                }
            }
        });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start a background thread; its work is skipped");
        }
        LatestWins { shared }
    }

    /// Queues `task` under `key`, replacing a task of the same key that has not started.
    pub fn submit(&self, key: K, task: impl FnOnce() + Send + 'static) {
        let (queue, ready) = &*self.shared;
        let mut queue = queue.locked();
        if queue.tasks.insert(key.clone(), Box::new(task)).is_none() {
            queue.order.push_back(key);
        }
        ready.notify_one();
    }

    /// Tasks queued and not started.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.shared.0.locked().tasks.len()
    }
}

impl<K> Drop for LatestWins<K> {
    fn drop(&mut self) {
        let (queue, ready) = &*self.shared;
        queue.locked().stopped = true;
        ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_newer_task_replaces_the_queued_one_of_its_key() {
        let worker = LatestWins::start("test-latest-wins");
        let (started, has_started) = mpsc::channel::<()>();
        let (release, blocked) = mpsc::channel::<()>();
        let (done, results) = mpsc::channel::<&'static str>();
        // The first task holds the thread until released, so the next ones queue up.
        let first_done = done.clone();
        worker.submit("hold", move || {
            started.send(()).unwrap();
            blocked.recv().unwrap();
            first_done.send("hold").unwrap();
        });
        has_started.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        for (key, name) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3")] {
            let done = done.clone();
            worker.submit(key, move || done.send(name).unwrap());
        }
        assert_eq!(worker.queued(), 2, "one task per key");
        release.send(()).unwrap();
        let last = done.clone();
        worker.submit("last", move || last.send("last").unwrap());
        let mut got = Vec::new();
        while got.last() != Some(&"last") {
            got.push(results.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
        }
        assert_eq!(got, ["hold", "a3", "b1", "last"], "replaced tasks never run; keys keep their first place");
    }

    #[test]
    fn a_panicking_task_does_not_stop_the_thread() {
        let worker = LatestWins::start("test-latest-wins-panic");
        let (done, results) = mpsc::channel();
        worker.submit(1, || panic!("a parser bug"));
        worker.submit(2, move || done.send(2).unwrap());
        assert_eq!(results.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), 2);
    }
}
