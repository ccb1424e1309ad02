//! Locking a std mutex without caring about poisoning.
//!
//! parlor's critical sections leave their state consistent before anything in
//! them can panic, so a panic elsewhere that poisoned a lock is no reason to
//! take every later request down with it.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
