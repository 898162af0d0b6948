//! How a writer thread that commits in batches (one transaction or `fdatasync` for whatever
//! waits) lets its batch grow on a busy core without a timed hold.

/// Lets the threads that are ready to run go first, as long as they add to what waits: a
/// writer about to take its batch calls this, so that on a busy core the requests being
/// served queue their writes into this batch rather than the next (one commit for many); on
/// an idle core nothing else is ready, `yield` returns at once and the batch goes without
/// delay. `waiting` tells how much waits now; at most `rounds` yields.
pub fn let_others_add(rounds: u32, mut waiting: impl FnMut() -> usize) {
    let mut seen = waiting();
    for _ in 0..rounds {
        std::thread::yield_now();
        let now = waiting();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// The rounds a writer gives [`let_others_add`]: enough for a core's ready threads to serve
/// and queue what they hold, few enough that a writer never defers for long.
pub const ROUNDS: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn returns_when_nothing_more_comes_and_stops_after_its_rounds() {
        let asked = AtomicUsize::new(0);
        let_others_add(ROUNDS, || {
            asked.fetch_add(1, Ordering::SeqCst);
            1
        });
        assert_eq!(
            asked.load(Ordering::SeqCst),
            2,
            "one yield, then the same count"
        );
        let asked = AtomicUsize::new(0);
        let_others_add(ROUNDS, || asked.fetch_add(1, Ordering::SeqCst));
        assert_eq!(
            asked.load(Ordering::SeqCst),
            ROUNDS as usize + 1,
            "growing every time: all its rounds, no more"
        );
    }
}
