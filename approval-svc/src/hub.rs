//! The event hub operators watch: a bounded ring of recent events plus a
//! broadcast of new ones. Sequence numbers let a console resume after a
//! reconnect without gaps or duplicates.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;
use zt_proto::pb::Event;

/// Events kept for late joiners and resumption.
pub const RING: usize = 10_000;
/// Events replayed to a watcher that starts from 0.
pub const REPLAY: usize = 500;

/// Fan-out of events to every watching console.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
    /// Where events published here go to reach the other replicas.
    replicas: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Event>>,
}

#[derive(Debug)]
struct Inner {
    seq: u64,
    ring: VecDeque<Event>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        let (tx, _) = broadcast::channel(4096);
        Hub {
            inner: Mutex::new(Inner {
                // Numbering starts from the clock (µs-scale), so a restarted
                // service continues above every number it handed out before
                // and a console resuming from its last number misses nothing.
                seq: u64::try_from(zt_proto::now_ms())
                    .unwrap_or(0)
                    .saturating_mul(1000),
                ring: VecDeque::with_capacity(1024),
            }),
            tx,
            replicas: std::sync::OnceLock::new(),
        }
    }

    /// Sends every event published here (not those received from other
    /// replicas) to `tx` as well.
    pub fn replicate_to(&self, tx: tokio::sync::mpsc::UnboundedSender<Event>) {
        let _ = self.replicas.set(tx);
    }

    /// Publishes an event and hands it to the other replicas.
    pub fn publish(&self, event: Event) -> u64 {
        if let Some(out) = self.replicas.get() {
            let _ = out.send(event.clone());
        }
        self.publish_local(event)
    }

    /// Stamps `event` with the next sequence number and time, and sends it
    /// to this replica's watchers only.
    pub fn publish_local(&self, mut event: Event) -> u64 {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        inner.seq += 1;
        event.seq = inner.seq;
        if event.time_ms == 0 {
            event.time_ms = zt_proto::now_ms();
        }
        if inner.ring.len() == RING {
            inner.ring.pop_front();
        }
        inner.ring.push_back(event.clone());
        // Sent under the lock so subscribers see events in sequence order.
        let _ = self.tx.send(event);
        inner.seq
    }

    /// Events after `from_seq` still in the ring (the last [`REPLAY`] when
    /// `from_seq` is 0), and a receiver for everything published afterwards.
    pub fn subscribe(&self, from_seq: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let rx = self.tx.subscribe();
        let backlog: Vec<Event> = if from_seq == 0 {
            let skip = inner.ring.len().saturating_sub(REPLAY);
            inner.ring.iter().skip(skip).cloned().collect()
        } else {
            inner
                .ring
                .iter()
                .filter(|e| e.seq > from_seq)
                .cloned()
                .collect()
        };
        (backlog, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_has_no_gaps_or_duplicates() {
        let hub = Hub::new();
        let seqs: Vec<u64> = (0..5).map(|_| hub.publish(Event::default())).collect();
        let (backlog, mut rx) = hub.subscribe(seqs[2]);
        assert_eq!(
            backlog.iter().map(|e| e.seq).collect::<Vec<_>>(),
            &seqs[3..]
        );
        let next = hub.publish(Event::default());
        assert_eq!(next, seqs[4] + 1);
        assert_eq!(rx.try_recv().map(|e| e.seq).ok(), Some(next));
    }

    #[test]
    fn a_restarted_hub_numbers_above_the_old_one() {
        let old = Hub::new();
        let last = (0..100)
            .map(|_| old.publish(Event::default()))
            .last()
            .unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let restarted = Hub::new();
        assert!(restarted.publish(Event::default()) > last);
    }
}
