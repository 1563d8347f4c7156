//! Locks that outlive a panic. A thread that panics while holding one of the program's locks
//! leaves the value as its last whole step did (no value here is half-written across an
//! `.await` or a call that can panic), so the next holder takes it as it is instead of panicking
//! in turn: one written rule instead of a `PoisonError` arm at every lock.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait MutexExt<T> {
    /// The guard, also when a panic poisoned the lock.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub trait RwLockExt<T> {
    /// A read guard, also when a panic poisoned the lock.
    fn reading(&self) -> RwLockReadGuard<'_, T>;
    /// The write guard, also when a panic poisoned the lock.
    fn writing(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockExt<T> for RwLock<T> {
    fn reading(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn writing(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
