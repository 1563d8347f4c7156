//! Scheduling priority for the threads that compute (the model's, the syntax parses, the job
//! planning) against the threads that talk to the editor.
//!
//! The model's threads keep every core busy while they decode. At the same priority as the
//! protocol threads (and the editor), a message that arrives then waits until the scheduler
//! takes a core back, which put several milliseconds on about one answer in a hundred: in
//! `benches/soak.py` the budgeted answer's p99 was 13.7 ms with everything at one priority,
//! 10.5 ms with the computing threads lowered (and 8.8 ms with the budget's wait ending 3 ms early).

/// How much lower the computing threads run than the rest of the process (a nice value).
pub const COMPUTE_NICENESS: i32 = 10;

/// Lowers the calling thread's priority by [`COMPUTE_NICENESS`]; threads it starts afterwards
/// (llama.cpp's compute threads) inherit it. Linux only: elsewhere a priority belongs to the
/// whole process, which must not be lowered.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // On Linux the priority belongs to the thread: `PRIO_PROCESS` with the thread's id.
        // SAFETY: plain system calls on this thread's own id, no memory passed.
        let changed = unsafe {
            let thread_id = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, thread_id);
            libc::setpriority(libc::PRIO_PROCESS, thread_id, (current + COMPUTE_NICENESS).min(19))
        };
        if changed != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "a computing thread keeps its priority");
        }
    }
}
