//! A consumer group's bookkeeping: which events are done, which are out with a member awaiting their ack, and
//! which wait to be delivered again.
//!
//! Pure state, no I/O: the consume loop (in `service.rs`) claims work from it under a lock, and the writer persists
//! its [`GroupPosition`]. Events are identified by sequence; the ids clients ack by map to sequences here.

use super::store::GroupPosition;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// One delivery handed to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The event's sequence.
    pub seq: u64,
    /// How many times it was delivered to this group before.
    pub redelivered: u32,
}

#[derive(Clone, Copy, Debug)]
struct Inflight {
    member: u64,
    deadline: Instant,
}

/// What a member asks for when it claims work.
#[derive(Clone, Copy, Debug)]
pub struct ClaimOptions {
    /// The topic's last sequence.
    pub head: u64,
    /// The most events to claim.
    pub max: usize,
    /// How long the member has to ack each one.
    pub ack_wait: Duration,
    /// Give up on an event after this many redeliveries (0: never).
    pub retry_limit: u32,
}

/// The state of one consumer group.
#[derive(Debug, Default)]
pub struct GroupState {
    floor: u64,
    done: BTreeSet<u64>,
    next: u64,
    ready: BTreeSet<u64>,
    inflight: HashMap<u64, Inflight>,
    per_member: HashMap<u64, usize>,
    attempts: HashMap<u64, u32>,
    seq_of: HashMap<String, u64>,
    id_of: HashMap<u64, String>,
    /// Members consuming now.
    pub members: usize,
    /// Whether the position changed since it was last saved.
    pub dirty: bool,
    /// Whether a save is queued with the writer.
    pub save_queued: bool,
    /// Events given up on after their retry limit, in total.
    pub given_up: u64,
}

impl GroupState {
    /// A group at a saved (or new) position.
    pub fn at(position: GroupPosition) -> Self {
        let floor = position.floor;
        Self {
            floor,
            done: position.done.into_iter().filter(|s| *s > floor).collect(),
            next: floor + 1,
            ..Default::default()
        }
    }

    /// The position to save.
    pub fn position(&self) -> GroupPosition {
        GroupPosition { floor: self.floor, done: self.done.iter().copied().collect() }
    }

    /// How many events `member` holds unacknowledged.
    pub fn inflight_of(&self, member: u64) -> usize {
        self.per_member.get(&member).copied().unwrap_or(0)
    }

    fn hand_out(&mut self, member: u64, seq: u64, deadline: Instant) {
        self.inflight.insert(seq, Inflight { member, deadline });
        *self.per_member.entry(member).or_default() += 1;
    }

    fn take_back(&mut self, seq: u64) -> Option<Inflight> {
        let inflight = self.inflight.remove(&seq)?;
        if let Some(n) = self.per_member.get_mut(&inflight.member) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_member.remove(&inflight.member);
            }
        }
        Some(inflight)
    }

    fn is_done(&self, seq: u64) -> bool {
        seq <= self.floor || self.done.contains(&seq)
    }

    fn mark_done(&mut self, seq: u64) {
        self.attempts.remove(&seq);
        if let Some(id) = self.id_of.remove(&seq) {
            self.seq_of.remove(&id);
        }
        if self.is_done(seq) {
            return;
        }
        if seq == self.floor + 1 {
            self.floor = seq;
            while self.done.remove(&(self.floor + 1)) {
                self.floor += 1;
            }
        } else {
            self.done.insert(seq);
        }
        self.dirty = true;
    }

    /// Hands `member` up to `options.max` events: first those waiting for redelivery, then new ones up to the
    /// head. Events past their retry limit are given up on (done) instead.
    pub fn claim(&mut self, member: u64, now: Instant, options: ClaimOptions) -> Vec<Claim> {
        let mut out = Vec::new();
        let deadline = now.checked_add(options.ack_wait).unwrap_or(now);
        while out.len() < options.max {
            let Some(seq) = self.ready.pop_first() else { break };
            if self.is_done(seq) {
                continue;
            }
            let attempts = self.attempts.get(&seq).copied().unwrap_or(0);
            if options.retry_limit > 0 && attempts > options.retry_limit {
                self.given_up += 1;
                self.mark_done(seq);
                continue;
            }
            self.attempts.insert(seq, attempts + 1);
            self.hand_out(member, seq, deadline);
            out.push(Claim { seq, redelivered: attempts });
        }
        while out.len() < options.max && self.next <= options.head {
            let seq = self.next;
            self.next += 1;
            if self.is_done(seq) || self.inflight.contains_key(&seq) || self.ready.contains(&seq) {
                continue;
            }
            self.attempts.insert(seq, 1);
            self.hand_out(member, seq, deadline);
            out.push(Claim { seq, redelivered: 0 });
        }
        out
    }

    /// Remembers the id of a delivered event, so that acks by id find it.
    pub fn track(&mut self, seq: u64, id: &str) {
        if !self.is_done(seq) && !self.id_of.contains_key(&seq) {
            self.seq_of.insert(id.to_string(), seq);
            self.id_of.insert(seq, id.to_string());
        }
    }

    /// Gives up on an event that cannot be delivered (it is missing from storage).
    pub fn skip(&mut self, seq: u64) {
        self.take_back(seq);
        self.ready.remove(&seq);
        self.mark_done(seq);
    }

    /// Acknowledges an event by id; false when the group holds no such event.
    pub fn ack(&mut self, id: &str) -> bool {
        let Some(&seq) = self.seq_of.get(id) else { return false };
        self.ack_seq(seq);
        true
    }

    /// Acknowledges an event by sequence.
    pub fn ack_seq(&mut self, seq: u64) {
        self.take_back(seq);
        self.ready.remove(&seq);
        self.mark_done(seq);
    }

    /// Rejects an event by id: it is delivered again right away. False when the group holds no such event out.
    pub fn nack(&mut self, id: &str) -> bool {
        let Some(&seq) = self.seq_of.get(id) else { return false };
        if self.take_back(seq).is_none() {
            return false;
        }
        self.ready.insert(seq);
        true
    }

    /// Moves `member`'s events whose ack wait is over back to redelivery; returns how many.
    pub fn expire(&mut self, member: u64, now: Instant) -> usize {
        if self.inflight_of(member) == 0 {
            return 0;
        }
        let expired: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.member == member && i.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &expired {
            self.take_back(*seq);
            self.ready.insert(*seq);
        }
        expired.len()
    }

    /// When `member`'s next unacknowledged event is due for redelivery.
    pub fn next_deadline(&self, member: u64) -> Option<Instant> {
        if self.inflight_of(member) == 0 {
            return None;
        }
        self.inflight.values().filter(|i| i.member == member).map(|i| i.deadline).min()
    }

    /// A member leaves: its unacknowledged events go back to redelivery. Returns how many.
    pub fn detach(&mut self, member: u64) -> usize {
        let held: Vec<u64> = self.inflight.iter().filter(|(_, i)| i.member == member).map(|(seq, _)| *seq).collect();
        for seq in &held {
            self.take_back(*seq);
            self.ready.insert(*seq);
        }
        self.members = self.members.saturating_sub(1);
        held.len()
    }

    /// Whether events wait for redelivery.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn options(head: u64, max: usize, retry_limit: u32) -> ClaimOptions {
        ClaimOptions { head, max, ack_wait: WAIT, retry_limit }
    }

    fn seqs(claims: &[Claim]) -> Vec<u64> {
        claims.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn claims_new_events_in_order_and_acks_advance_the_floor() {
        let now = Instant::now();
        let mut g = GroupState::at(GroupPosition { floor: 2, done: vec![] });
        assert_eq!(seqs(&g.claim(1, now, options(6, 3, 0))), [3, 4, 5]);
        assert_eq!(seqs(&g.claim(2, now, options(6, 10, 0))), [6]);
        assert!(g.claim(1, now, options(6, 10, 0)).is_empty());
        for (seq, id) in [(3, "c"), (4, "d"), (5, "e"), (6, "f")] {
            g.track(seq, id);
        }
        assert_eq!(g.inflight_of(1), 3);
        assert!(g.ack("e"));
        assert_eq!(g.position(), GroupPosition { floor: 2, done: vec![5] });
        assert!(g.ack("c"));
        assert!(g.ack("d"));
        assert_eq!(g.position(), GroupPosition { floor: 5, done: vec![] });
        assert!(!g.ack("c"), "acked twice");
        assert!(!g.ack("nope"));
        assert!(g.dirty);
        assert_eq!(g.inflight_of(1), 0);
        assert_eq!(g.inflight_of(2), 1);
    }

    #[test]
    fn unacked_events_come_back_after_the_ack_wait_or_a_nack() {
        let now = Instant::now();
        let mut g = GroupState::at(GroupPosition::default());
        assert_eq!(seqs(&g.claim(1, now, options(2, 10, 0))), [1, 2]);
        g.track(1, "a");
        g.track(2, "b");
        assert_eq!(g.next_deadline(1), Some(now + WAIT));
        assert_eq!(g.expire(1, now + WAIT / 2), 0);
        assert!(g.nack("b"));
        assert!(!g.nack("b"), "not out any more");
        let again = g.claim(1, now, options(2, 10, 0));
        assert_eq!(again, [Claim { seq: 2, redelivered: 1 }]);
        assert_eq!(g.expire(1, now + WAIT), 2);
        let again = g.claim(2, now + WAIT, options(2, 10, 0));
        assert_eq!(again, [Claim { seq: 1, redelivered: 1 }, Claim { seq: 2, redelivered: 2 }]);
        // The late ack of the first member still counts: ids are the group's.
        assert!(g.ack("a"));
        assert_eq!(g.position().floor, 1);
    }

    #[test]
    fn the_retry_limit_gives_up() {
        let now = Instant::now();
        let mut g = GroupState::at(GroupPosition::default());
        assert_eq!(g.claim(1, now, options(1, 10, 1)).len(), 1);
        g.expire(1, now + WAIT);
        assert_eq!(g.claim(1, now, options(1, 10, 1)), [Claim { seq: 1, redelivered: 1 }]);
        g.expire(1, now + 2 * WAIT);
        assert!(g.claim(1, now, options(1, 10, 1)).is_empty());
        assert_eq!(g.given_up, 1);
        assert_eq!(g.position().floor, 1);
    }

    #[test]
    fn a_leaving_member_hands_its_events_back() {
        let now = Instant::now();
        let mut g = GroupState::at(GroupPosition::default());
        g.members = 2;
        assert_eq!(seqs(&g.claim(1, now, options(3, 10, 0))), [1, 2, 3]);
        g.ack_seq(2);
        assert_eq!(g.detach(1), 2);
        assert!(g.has_ready());
        assert_eq!(seqs(&g.claim(2, now, options(3, 10, 0))), [1, 3]);
        assert_eq!(g.members, 1);
    }

    #[test]
    fn a_saved_position_skips_done_events() {
        let now = Instant::now();
        let mut g = GroupState::at(GroupPosition { floor: 1, done: vec![3, 1] });
        assert_eq!(seqs(&g.claim(1, now, options(4, 10, 0))), [2, 4]);
        g.ack_seq(2);
        assert_eq!(g.position(), GroupPosition { floor: 3, done: vec![] });
        g.skip(4);
        assert_eq!(g.position().floor, 4);
    }
}
