//! A one-way flag that tasks can wait for: the shutdown signal, and a
//! connection's "closing" state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_listener::Event;

#[derive(Clone, Default)]
pub struct Flag(Arc<Inner>);

#[derive(Default)]
struct Inner {
    set: AtomicBool,
    event: Event,
}

impl Flag {
    /// Sets the flag; returns whether this call was the one that set it.
    pub fn set(&self) -> bool {
        let first = !self.0.set.swap(true, Ordering::AcqRel);
        self.0.event.notify(usize::MAX);
        first
    }

    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::Acquire)
    }

    /// Resolves once the flag is set.
    pub async fn wait(&self) {
        loop {
            if self.is_set() {
                return;
            }
            let listener = self.0.event.listen();
            // Checked again after listening, so a `set` in between is not missed.
            if self.is_set() {
                return;
            }
            listener.await;
        }
    }
}
