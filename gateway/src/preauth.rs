//! What peers cost before they are authenticated. A TCP connection that has not finished its
//! TLS handshake is nobody yet: it may not hold more than its share of connection slots, and
//! its refusal is recorded in the permanent access log only as part of a summary — per source
//! address and window, with a cap on the sources summarised one by one — so that a flood of
//! garbage connections costs a few leaves, not one each. A request refused after the handshake
//! because its certificate names no usable department (unknown, disabled, revoked since, no
//! department at all) has no budget either: the first few of a source in a window are leaves
//! of their own, with the certificate, and the rest are counted in the same summary.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tlog::Leaf;

/// Pending handshakes per source, and the refusals of the current window.
#[derive(Debug)]
pub struct PreAuth {
    pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_pending: usize,
    window: Mutex<Window>,
    max_sources: usize,
}

/// One source's (or the overflow's) refusals in a window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    count: u64,
    first_ms: i64,
    last_ms: i64,
    reasons: BTreeMap<&'static str, u64>,
}

impl Summary {
    fn add(&mut self, reason: &'static str, at_ms: i64) {
        self.count += 1;
        self.first_ms = self.first_ms.min(at_ms);
        self.last_ms = self.last_ms.max(at_ms);
        *self.reasons.entry(reason).or_default() += 1;
    }

    fn new(at_ms: i64) -> Summary {
        Summary {
            count: 0,
            first_ms: at_ms,
            last_ms: at_ms,
            reasons: BTreeMap::new(),
        }
    }
}

/// Requests of one source refused after the handshake that are written as leaves of their
/// own in a window; the rest of the window's are counted in the source's summary.
pub const DETAILED_REFUSALS_PER_SOURCE: u32 = 8;

#[derive(Debug, Default)]
struct Window {
    sources: HashMap<IpAddr, Summary>,
    others: Option<Summary>,
    /// Refused requests written as leaves of their own, per source.
    detailed: HashMap<IpAddr, u32>,
}

impl Window {
    /// Counts one refusal in `source`'s summary, or in the overflow's past the cap.
    fn count(&mut self, max_sources: usize, source: IpAddr, reason: &'static str, at_ms: i64) {
        let summary = if self.sources.contains_key(&source) || self.sources.len() < max_sources {
            self.sources
                .entry(source)
                .or_insert_with(|| Summary::new(at_ms))
        } else {
            self.others.get_or_insert_with(|| Summary::new(at_ms))
        };
        summary.add(reason, at_ms);
    }
}

/// A connection counted against its source's pending handshakes until dropped.
#[derive(Debug)]
pub struct Pending {
    pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pending.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.source);
            }
        }
    }
}

impl PreAuth {
    /// At most `max_pending` handshakes per source at once; at most `max_sources` sources
    /// summarised one by one per window.
    pub fn new(max_pending: usize, max_sources: usize) -> PreAuth {
        PreAuth {
            pending: Arc::default(),
            max_pending,
            window: Mutex::default(),
            max_sources,
        }
    }

    /// Counts a new connection from `source` as handshaking, or `None` when the source has
    /// its share in handshakes already.
    pub fn admit(&self, source: IpAddr) -> Option<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let n = pending.entry(source).or_default();
        if *n >= self.max_pending {
            return None;
        }
        *n += 1;
        Some(Pending {
            pending: self.pending.clone(),
            source,
        })
    }

    /// Connections in their handshake now, from every source.
    pub fn handshaking(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Records one refused handshake (or connection closed before one) from `source`.
    pub fn refused(&self, source: IpAddr, reason: &'static str, at_ms: i64) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.count(self.max_sources, source, reason, at_ms);
    }

    /// Records one request from `source` refused after the handshake (`reason`: its error
    /// code). True when it is to be written as a leaf of its own: the first
    /// [`DETAILED_REFUSALS_PER_SOURCE`] of the source in this window, while fewer than the cap
    /// of sources have had any. Otherwise it is counted in the source's summary, and false.
    pub fn refused_request(&self, source: IpAddr, reason: &'static str, at_ms: i64) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if window.detailed.contains_key(&source) || window.detailed.len() < self.max_sources {
            let written = window.detailed.entry(source).or_default();
            if *written < DETAILED_REFUSALS_PER_SOURCE {
                *written += 1;
                return true;
            }
        }
        window.count(self.max_sources, source, reason, at_ms);
        false
    }

    /// Closes the window: one summary leaf per source (in address order), then one for the
    /// sources past the cap (`peer` `*`).
    pub fn take_summaries(&self) -> Vec<Leaf> {
        let window = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let mut sources: Vec<(IpAddr, Summary)> = window.sources.into_iter().collect();
        sources.sort_by_key(|(ip, _)| *ip);
        sources
            .into_iter()
            .map(|(ip, s)| (ip.to_string(), s))
            .chain(window.others.map(|s| ("*".to_owned(), s)))
            .map(|(peer, s)| Leaf::handshakes(&peer, s.count, s.first_ms, s.last_ms, &s.reasons))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_of_handshakes_and_refusals_are_summarised() {
        let pre = PreAuth::new(2, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = pre.admit(a).unwrap();
        let _second = pre.admit(a).unwrap();
        assert!(
            pre.admit(a).is_none(),
            "a third pending handshake from one source"
        );
        assert!(pre.admit(b).is_some());
        drop(first);
        assert!(
            pre.admit(a).is_some(),
            "a finished handshake frees its place"
        );

        for i in 0..1000 {
            pre.refused(
                a,
                if i % 10 == 0 { "timeout" } else { "protocol" },
                1000 + i,
            );
        }
        pre.refused(b, "no_certificate", 5000);
        // Past the cap of two sources, the rest share one summary.
        for i in 4..100u8 {
            pre.refused(IpAddr::from([10, 0, 0, i]), "protocol", 6000);
        }
        let leaves = pre.take_summaries();
        assert_eq!(leaves.len(), 3);
        assert_eq!(leaves[0].peer.as_deref(), Some("127.0.0.2"));
        assert_eq!(leaves[0].count, Some(1000));
        assert_eq!((leaves[0].first_ms, leaves[0].time_ms), (Some(1000), 1999));
        assert_eq!(leaves[0].code.as_deref(), Some("protocol:900,timeout:100"));
        assert_eq!(leaves[1].peer.as_deref(), Some("127.0.0.3"));
        assert_eq!(leaves[2].peer.as_deref(), Some("*"));
        assert_eq!(leaves[2].count, Some(96));
        assert!(
            pre.take_summaries().is_empty(),
            "a window is summarised once"
        );
    }

    #[test]
    fn refused_requests_are_leaves_of_their_own_only_the_first_few_of_a_source_a_window() {
        let pre = PreAuth::new(2, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let written = (0..100)
            .filter(|i| pre.refused_request(a, "unknown", 1000 + i))
            .count();
        assert_eq!(written, DETAILED_REFUSALS_PER_SOURCE as usize);
        // Two sources have had leaves: a third is only counted.
        assert!(pre.refused_request("127.0.0.3".parse().unwrap(), "disabled", 2000));
        assert!(!pre.refused_request("127.0.0.4".parse().unwrap(), "disabled", 2001));
        let leaves = pre.take_summaries();
        assert_eq!(leaves.len(), 2, "{leaves:?}");
        assert_eq!(leaves[0].peer.as_deref(), Some("127.0.0.2"));
        assert_eq!(
            leaves[0].count,
            Some(100 - u64::from(DETAILED_REFUSALS_PER_SOURCE))
        );
        assert_eq!(leaves[0].code.as_deref(), Some("unknown:92"));
        assert_eq!(leaves[1].peer.as_deref(), Some("127.0.0.4"));
        // A new window writes the first few again.
        assert!(pre.refused_request(a, "unknown", 70_000));
    }
}
