//! Long-poll of device twins: a device asks for its twin "once its version is past N, or after
//! W seconds", and waits on the server without polling. A channel per device that someone is
//! waiting on carries the twin's latest version; whoever changes a twin's desired properties
//! (a back-end patch, a rollout) announces the new version, which wakes only that device's
//! waiters. A device nobody waits on costs nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// The channels, by device id.
#[derive(Debug, Default)]
pub(super) struct TwinWatch {
    senders: Mutex<HashMap<String, watch::Sender<i64>>>,
}

/// One waiter's subscription; dropping it removes the device's channel once nobody waits.
pub(super) struct Waiter {
    watch: Arc<TwinWatch>,
    id: String,
    rx: Option<watch::Receiver<i64>>,
}

impl TwinWatch {
    fn senders(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<i64>>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to a device's twin version; call before reading the twin, so a change made
    /// between the read and the wait is not missed.
    pub(super) fn subscribe(self: &Arc<Self>, id: &str) -> Waiter {
        let rx = self
            .senders()
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(i64::MIN).0)
            .subscribe();
        Waiter { watch: self.clone(), id: id.to_owned(), rx: Some(rx) }
    }

    /// The device's twin is now at `version` (`i64::MAX`: the device is gone).
    pub(super) fn changed(&self, id: &str, version: i64) {
        if let Some(tx) = self.senders().get(id) {
            tx.send_replace(version);
        }
    }

    /// Devices with a waiter (for tests).
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.senders().len()
    }
}

impl Waiter {
    /// Waits until a version past `after` is announced, or `wait` has passed; true when one
    /// was.
    pub(super) async fn past(&mut self, after: i64, wait: Duration) -> bool {
        let Some(rx) = self.rx.as_mut() else { return false };
        tokio::time::timeout(wait, rx.wait_for(|v| *v > after)).await.is_ok_and(|r| r.is_ok())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut senders = self.watch.senders();
        if senders.get(&self.id).is_some_and(|tx| tx.receiver_count() == 0) {
            senders.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_only_its_device_and_channels_go_with_their_waiters() {
        let w = Arc::new(TwinWatch::default());
        let mut a = w.subscribe("a");
        let mut b = w.subscribe("b");
        assert_eq!(w.watched(), 2);
        w.changed("a", 5);
        assert!(a.past(4, Duration::from_millis(10)).await);
        assert!(!a.past(5, Duration::from_millis(10)).await, "version 5 is not past 5");
        assert!(!b.past(0, Duration::from_millis(10)).await, "b did not change");
        // A change announced before the wait began is still seen.
        w.changed("b", 1);
        assert!(b.past(0, Duration::from_millis(10)).await);
        drop(a);
        assert_eq!(w.watched(), 1);
        drop(b);
        assert_eq!(w.watched(), 0);
        // Nobody waits: nothing is kept.
        w.changed("c", 1);
        assert_eq!(w.watched(), 0);
    }
}
