//! Waiting until a server has gone quiet before a measurement starts,
//! shared by the load generators (included with `#[path]`): parlor tells a
//! room's members of each join, and a run measures what comes after those
//! announcements, not them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Waits until `frames` (a count of the frames the clients read) has not
/// moved for a second, or `longest` has passed.
pub async fn quiet(frames: &AtomicU64, longest: Duration) {
    let deadline = Instant::now() + longest;
    let mut seen = frames.load(Ordering::Acquire);
    while Instant::now() < deadline {
        async_std::task::sleep(Duration::from_secs(1)).await;
        let now = frames.load(Ordering::Acquire);
        if now == seen {
            return;
        }
        seen = now;
    }
}
