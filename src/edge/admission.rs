//! The global connection bound (`limits.max_connections`): sockets past it are closed at
//! accept, before any handshake work, so a connection flood costs one accept and one close each.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts live sockets against the bound.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    live: AtomicUsize,
    /// Set while full and already logged: one warning per episode, not one per refused socket.
    warned: AtomicBool,
}

/// One admitted socket; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket(Arc<Admission>);

impl Admission {
    /// `max` 0 means no bound.
    pub fn new(max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max,
            live: AtomicUsize::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// A place for one more socket, or `None` when the bound is reached.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let live = self.live.fetch_add(1, Ordering::AcqRel);
        if self.max != 0 && live >= self.max {
            self.live.fetch_sub(1, Ordering::AcqRel);
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = self.max,
                    "limits.max_connections reached: new connections are closed at accept"
                );
            }
            return None;
        }
        self.warned.store(false, Ordering::Relaxed);
        Some(Ticket(self.clone()))
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_and_places_come_back() {
        let a = Admission::new(2);
        let first = a.admit().expect("first");
        let _second = a.admit().expect("second");
        assert!(a.admit().is_none());
        drop(first);
        assert!(a.admit().is_some());
        assert_eq!(a.live(), 1, "the temporary ticket above was dropped");
    }

    #[test]
    fn zero_means_unbounded() {
        let a = Admission::new(0);
        let tickets: Vec<_> = (0..1000).filter_map(|_| a.admit()).collect();
        assert_eq!(tickets.len(), 1000);
    }
}
