//! The member's queue of changes for the hub: ProbeStatuses and Abnormal summaries. Bounded, and
//! coalescing, since the hub keeps only each object's latest state. A change stays queued until
//! the hub acknowledges it, so a reconnect sends again whatever was not acknowledged; when one
//! kind has `capacity` objects waiting, the oldest of that kind is dropped and counted (the count
//! goes up with every heartbeat). Each kind has its own bound so a burst of Abnormals cannot push
//! probe results out.
//!
//! Pure: no IO, no clock. The link drives it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use kdiag_api::DiagnosisSummary;

use crate::protocol::{MemberMessage, ProbeResult};

/// What an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ProbeStatus,
    Abnormal,
}

/// An object by kind, namespace and name.
pub type Key = (Kind, String, String);

/// One change to send: the object's new state, or None when it was deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    ProbeStatus {
        namespace: String,
        name: String,
        object: Option<ProbeResult>,
    },
    Abnormal {
        namespace: String,
        name: String,
        object: Option<DiagnosisSummary>,
    },
}

impl Update {
    fn key(&self) -> Key {
        match self {
            Self::ProbeStatus {
                namespace, name, ..
            } => (Kind::ProbeStatus, namespace.clone(), name.clone()),
            Self::Abnormal {
                namespace, name, ..
            } => (Kind::Abnormal, namespace.clone(), name.clone()),
        }
    }

    fn is_deletion(&self) -> bool {
        match self {
            Self::ProbeStatus { object, .. } => object.is_none(),
            Self::Abnormal { object, .. } => object.is_none(),
        }
    }

    fn message(&self, seq: u64) -> MemberMessage {
        match self.clone() {
            Self::ProbeStatus {
                namespace,
                name,
                object,
            } => MemberMessage::ProbeStatus {
                seq,
                namespace,
                name,
                object,
            },
            Self::Abnormal {
                namespace,
                name,
                object,
            } => MemberMessage::Abnormal {
                seq,
                namespace,
                name,
                object,
            },
        }
    }

    fn fingerprint(&self) -> u64 {
        // DefaultHasher::new() has fixed keys: stable within the process, which is all it needs.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let json = match self {
            Self::ProbeStatus { object, .. } => serde_json::to_string(object),
            Self::Abnormal { object, .. } => serde_json::to_string(object),
        };
        json.unwrap_or_default().hash(&mut h);
        h.finish()
    }
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    update: Update,
    fingerprint: u64,
}

/// The queue. `capacity` counts distinct ProbeStatuses waiting.
#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    next_seq: u64,
    pending: HashMap<Key, Pending>,
    /// Pending keys by sequence number: the order to send in and to drop from.
    order: BTreeMap<u64, Key>,
    /// Fingerprints of what the hub acknowledged last, so an unchanged object (a relist, a
    /// write that changed only metadata) is not sent again.
    acknowledged: HashMap<Key, u64>,
    /// Pending results with a sequence number up to this were sent on the current connection.
    sent_up_to: u64,
    dropped: u64,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_seq: 1,
            pending: HashMap::new(),
            order: BTreeMap::new(),
            acknowledged: HashMap::new(),
            sent_up_to: 0,
            dropped: 0,
        }
    }

    /// Queues `update`, replacing a pending one of the same object. False when there was
    /// nothing new to send (the hub has this very state, or it is already queued).
    pub fn push(&mut self, update: Update) -> bool {
        let key = update.key();
        let fingerprint = update.fingerprint();
        if let Some(p) = self.pending.get(&key) {
            if p.fingerprint == fingerprint {
                return false;
            }
            let seq = p.seq;
            self.order.remove(&seq);
            self.pending.remove(&key);
        } else if self.acknowledged.get(&key) == Some(&fingerprint) {
            return false;
        }
        // A deletion of an object this run never sent still goes up: the hub may hold it from
        // an earlier run of this member.
        let kind = key.0;
        if self.pending.keys().filter(|k| k.0 == kind).count() >= self.capacity
            && let Some((&seq, _)) = self.order.iter().find(|(_, k)| k.0 == kind)
            && let Some(oldest) = self.order.remove(&seq)
        {
            self.pending.remove(&oldest);
            self.dropped += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.pending.insert(
            key,
            Pending {
                seq,
                update,
                fingerprint,
            },
        );
        true
    }

    /// The messages not yet sent on this connection, oldest first; they count as sent.
    pub fn unsent(&mut self) -> Vec<MemberMessage> {
        let messages: Vec<MemberMessage> = self
            .order
            .range(self.sent_up_to + 1..)
            .filter_map(|(_, key)| self.pending.get(key))
            .map(|p| p.update.message(p.seq))
            .collect();
        if let Some((&last, _)) = self.order.last_key_value() {
            self.sent_up_to = self.sent_up_to.max(last);
        }
        messages
    }

    /// The hub stored the result with sequence number `seq`. An ack of a result replaced since
    /// (a newer one of the same object is pending) changes nothing.
    pub fn ack(&mut self, seq: u64) {
        let Some(key) = self.order.remove(&seq) else {
            return;
        };
        if let Some(p) = self.pending.remove(&key) {
            if p.update.is_deletion() {
                self.acknowledged.remove(&key);
            } else {
                self.acknowledged.insert(key, p.fingerprint);
            }
        }
    }

    /// A new connection: everything pending is sent again.
    pub fn rewind(&mut self) {
        self.sent_up_to = 0;
    }

    /// Results waiting for an acknowledgement.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Results dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_api::{CheckerStatus, ProbeCheckerStatus, ProbeStatusSpec};

    fn update(name: &str, status: CheckerStatus) -> Update {
        Update::ProbeStatus {
            namespace: "ns".into(),
            name: name.into(),
            object: Some(ProbeResult {
                spec: ProbeStatusSpec {
                    checkers: vec![ProbeCheckerStatus {
                        name: "c".into(),
                        status,
                        ..Default::default()
                    }],
                },
                ..Default::default()
            }),
        }
    }

    fn seqs(messages: &[MemberMessage]) -> Vec<(u64, String)> {
        messages
            .iter()
            .map(|m| match m {
                MemberMessage::ProbeStatus { seq, name, .. }
                | MemberMessage::Abnormal { seq, name, .. } => (*seq, name.clone()),
                other => panic!("not a result: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn results_are_sent_once_per_connection_and_again_after_a_reconnect_until_acknowledged() {
        let mut o = Outbox::new(10);
        assert!(o.push(update("a", CheckerStatus::Pass)));
        assert!(o.push(update("b", CheckerStatus::Error)));
        assert_eq!(seqs(&o.unsent()), [(1, "a".into()), (2, "b".into())]);
        assert!(o.unsent().is_empty());
        o.ack(1);
        o.rewind();
        assert_eq!(seqs(&o.unsent()), [(2, "b".into())]);
        o.ack(2);
        assert!(o.is_empty());
    }

    #[test]
    fn a_newer_state_of_the_same_object_replaces_the_pending_one() {
        let mut o = Outbox::new(10);
        o.push(update("a", CheckerStatus::Pass));
        let _ = o.unsent();
        o.push(update("a", CheckerStatus::Error));
        assert_eq!(o.len(), 1);
        // The ack of the replaced state does not forget the newer one.
        o.ack(1);
        assert_eq!(seqs(&o.unsent()), [(2, "a".into())]);
        o.ack(2);
        assert!(o.is_empty());
    }

    #[test]
    fn an_acknowledged_state_is_not_sent_again_but_a_change_is() {
        let mut o = Outbox::new(10);
        o.push(update("a", CheckerStatus::Pass));
        let _ = o.unsent();
        o.ack(1);
        assert!(!o.push(update("a", CheckerStatus::Pass)));
        assert!(o.push(update("a", CheckerStatus::Warn)));
        assert!(!o.push(update("a", CheckerStatus::Warn)), "already queued");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_result_and_counts_it() {
        let mut o = Outbox::new(2);
        o.push(update("a", CheckerStatus::Pass));
        o.push(update("b", CheckerStatus::Pass));
        o.push(update("c", CheckerStatus::Pass));
        assert_eq!(o.dropped(), 1);
        assert_eq!(seqs(&o.unsent()), [(2, "b".into()), (3, "c".into())]);
        // Replacing a queued object is not a drop.
        o.push(update("c", CheckerStatus::Error));
        assert_eq!(o.dropped(), 1);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn a_deletion_travels_like_a_change() {
        let mut o = Outbox::new(10);
        o.push(update("a", CheckerStatus::Pass));
        let _ = o.unsent();
        o.ack(1);
        assert!(o.push(Update::ProbeStatus {
            namespace: "ns".into(),
            name: "a".into(),
            object: None,
        }));
        let sent = o.unsent();
        assert!(matches!(
            &sent[..],
            [MemberMessage::ProbeStatus { object: None, .. }]
        ));
        o.ack(2);
        // Created again after the deletion: news.
        assert!(o.push(update("a", CheckerStatus::Pass)));
    }

    fn abnormal(name: &str, phase: &str) -> Update {
        Update::Abnormal {
            namespace: "ns".into(),
            name: name.into(),
            object: Some(DiagnosisSummary {
                namespace: "ns".into(),
                name: name.into(),
                phase: phase.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_burst_of_abnormals_drops_older_abnormals_but_never_a_probe_result() {
        let mut o = Outbox::new(2);
        o.push(update("p", CheckerStatus::Error));
        for n in ["a", "b", "c", "d"] {
            o.push(abnormal(n, "Diagnosing"));
        }
        assert_eq!(o.dropped(), 2);
        assert_eq!(
            seqs(&o.unsent()),
            [(1, "p".into()), (4, "c".into()), (5, "d".into())]
        );
    }

    #[test]
    fn an_abnormal_and_a_probe_status_of_the_same_name_are_different_objects() {
        let mut o = Outbox::new(10);
        assert!(o.push(update("x", CheckerStatus::Pass)));
        assert!(o.push(abnormal("x", "Succeeded")));
        assert_eq!(o.len(), 2);
        let sent = o.unsent();
        assert!(matches!(sent[1], MemberMessage::Abnormal { seq: 2, .. }));
        o.ack(2);
        assert!(!o.push(abnormal("x", "Succeeded")), "acknowledged already");
    }
}
