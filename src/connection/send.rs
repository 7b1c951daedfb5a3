//! The sending side: accepting messages, processing the peer's ACK and MSG_ACK frames, loss
//! detection and probe timeouts (RFC 9002 section 6), retransmission, and giving up
//! (Undeliverable) with a reason.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::ledger::{SentFrame, SentPacket, carried};
use super::{Connection, State, fragment_chunk};
use crate::error::{DatagramError, SendError};
use crate::event::{Event, UndeliverableReason};
use crate::histogram::LatencyHistogram;
use crate::message::{Guarantee, SendOptions};
use crate::rtt::backoff;
use crate::seq::{MAX_SEQ, MessageId};
use crate::timer::Timer;
use crate::wire::{AckFrame, ForwardEntry, MsgAckFrame};

/// Persistent congestion takes losses spanning this many probe timeouts (RFC 9002
/// section 7.6.1, kPersistentCongestionThreshold).
const PERSISTENT_CONGESTION_THRESHOLD: u32 = 3;

/// Where one fragment of a reliable message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FragState {
    /// Waiting to be sent (for the first time or again).
    Queued,
    /// Sent in this packet, not yet acknowledged or declared lost.
    InFlight(u64),
    /// Its packet was acknowledged: the receiver holds it.
    Received,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Frag {
    pub state: FragState,
    pub retransmits: u32,
}

/// A reliable message awaiting its outcome.
#[derive(Debug)]
pub(super) struct OutMsg {
    pub payload: Vec<u8>,
    pub guarantee: Guarantee,
    pub channel: u8,
    pub chan_seq: Option<u64>,
    pub queued_at: Instant,
    pub max_retransmits: u32,
    /// Fragment count (1 = not fragmented).
    pub count: u32,
    pub frags: Frags,
}

/// Fragment states: inline for the common unfragmented message, so that sending it allocates
/// nothing beyond the (pooled) payload buffer.
#[derive(Debug)]
pub(super) enum Frags {
    One([Frag; 1]),
    Many(Vec<Frag>),
}

impl Frags {
    const QUEUED: Frag = Frag {
        state: FragState::Queued,
        retransmits: 0,
    };

    #[inline]
    fn new(count: u32) -> Frags {
        if count <= 1 {
            Frags::One([Self::QUEUED])
        } else {
            Self::many(count)
        }
    }

    #[cold]
    #[inline(never)]
    fn many(count: u32) -> Frags {
        Frags::Many(vec![Self::QUEUED; count as usize])
    }
}

impl std::ops::Deref for Frags {
    type Target = [Frag];
    fn deref(&self) -> &[Frag] {
        match self {
            Frags::One(f) => f,
            Frags::Many(v) => v,
        }
    }
}

impl std::ops::DerefMut for Frags {
    fn deref_mut(&mut self) -> &mut [Frag] {
        match self {
            Frags::One(f) => f,
            Frags::Many(v) => v,
        }
    }
}

/// An at-most-once message awaiting its outcome.
#[derive(Debug)]
pub(super) struct AmoOut {
    pub payload: Vec<u8>,
    pub channel: u8,
    pub queued_at: Instant,
    pub deadline: Option<Instant>,
    pub count: u32,
    /// Fragments acknowledged.
    pub acked: u32,
    /// Fragments sent.
    pub sent: u32,
}

/// Send-to-Delivered latencies measured at `now`, recorded by runs: messages completed
/// together were often queued together, and consecutive ones with the same send time are
/// measured once and recorded as one run.
struct Latencies {
    now: Instant,
    /// The current run: its send time, latency and length.
    run: Option<(Instant, Duration, u64)>,
}

impl Latencies {
    fn new(now: Instant) -> Self {
        Latencies { now, run: None }
    }

    /// Adds a message queued at `queued_at`; a run that ends is recorded into `histogram`.
    #[inline]
    fn add(&mut self, queued_at: Instant, histogram: &mut LatencyHistogram) {
        match &mut self.run {
            Some((q, _, n)) if *q == queued_at => *n += 1,
            run => {
                if let Some((_, d, n)) = run.take() {
                    histogram.record_n(d, n);
                }
                let d = self.now.saturating_duration_since(queued_at);
                *run = Some((queued_at, d, 1));
            }
        }
    }

    /// Records the last run.
    fn finish(self, histogram: &mut LatencyHistogram) {
        if let Some((_, d, n)) = self.run {
            histogram.record_n(d, n);
        }
    }
}

/// Whether `ack` covers one of the `skipped` packet numbers (ascending): one binary search
/// per range, and none when the ranges' span holds no skipped number.
fn acks_a_skipped_pn(skipped: &VecDeque<u64>, ack: &AckFrame<'_>) -> bool {
    let (Some(&low), Some(&high)) = (skipped.front(), skipped.back()) else {
        return false;
    };
    if high < ack.smallest() || low > ack.largest {
        return false;
    }
    ack.ranges().any(|r| {
        let i = skipped.partition_point(|&p| p < r.start);
        skipped.get(i).is_some_and(|&p| p < r.end)
    })
}

/// Number of fragments for a payload of `len` bytes.
pub(super) fn fragment_count(len: usize, max_datagram_size: usize) -> u32 {
    let chunk = fragment_chunk(max_datagram_size);
    if len <= chunk {
        1
    } else {
        len.div_ceil(chunk) as u32
    }
}

impl Connection {
    /// The next position on ordered channel `channel`.
    #[inline]
    fn next_chan_seq(&mut self, channel: u8) -> u64 {
        match self.chan_seq.as_deref_mut() {
            Some(seqs) => {
                let s = &mut seqs[usize::from(channel)];
                *s += 1;
                *s - 1
            }
            None => self.first_chan_seq(channel),
        }
    }

    /// [`next_chan_seq`](Self::next_chan_seq) the first time: the positions are created on
    /// first use, so connections that never order pay nothing for them.
    #[cold]
    #[inline(never)]
    fn first_chan_seq(&mut self, channel: u8) -> u64 {
        let mut seqs = Box::new([0u64; 256]);
        seqs[usize::from(channel)] = 1;
        self.chan_seq = Some(seqs);
        0
    }

    pub(super) fn send_message(
        &mut self,
        now: Instant,
        payload: &[u8],
        opts: SendOptions,
    ) -> Result<MessageId, SendError> {
        if self.state != State::Established {
            return Err(SendError::Closed);
        }
        self.limits.admit_size(payload.len())?;
        if opts.ordered && !opts.guarantee.is_reliable() {
            return Err(SendError::OrderedAtMostOnce);
        }
        // Abandoned messages the peer has not yet confirmed skipping still take a slot, so a
        // peer that never acknowledges cannot make the FORWARD list grow without bound.
        let held = self.pending_messages + self.forward.len();
        self.limits
            .admit_send(payload.len(), held, self.pending_bytes)?;
        let count = fragment_count(payload.len(), self.config.max_datagram_size);
        let deadline = opts
            .deadline
            .or(self.config.default_deadline)
            .map(|d| now + d);
        let mut buf = self.take_buffer(payload.len());
        buf.extend_from_slice(payload);
        let reliable = opts.guarantee.is_reliable();
        let id = if reliable {
            let id = self.out_base + self.outbox.len() as u64;
            if id >= MAX_SEQ {
                self.give_buffer(buf);
                return Err(SendError::IdsExhausted);
            }
            let chan_seq = if opts.ordered {
                Some(self.next_chan_seq(opts.channel))
            } else {
                None
            };
            let frags = Frags::new(count);
            self.outbox.push_back(OutMsg {
                payload: buf,
                guarantee: opts.guarantee,
                channel: opts.channel,
                chan_seq,
                queued_at: now,
                max_retransmits: opts
                    .max_retransmits
                    .unwrap_or(self.config.default_max_retransmits),
                count,
                frags,
            });
            id
        } else {
            let id = self.amo_base + self.amo_out.len() as u64;
            if id >= MAX_SEQ {
                self.give_buffer(buf);
                return Err(SendError::IdsExhausted);
            }
            self.amo_out.push_back(AmoOut {
                payload: buf,
                channel: opts.channel,
                queued_at: now,
                deadline,
                count,
                acked: 0,
                sent: 0,
            });
            id
        };
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, reliable, id)));
            self.arm_deadline_timer();
        }
        self.pending_messages += 1;
        self.pending_bytes += payload.len();
        self.stats.messages_sent += 1;
        log::trace!(
            "conn {}: send {} id {id} ({} bytes, {count} fragments)",
            self.local_cid,
            opts.guarantee,
            payload.len()
        );
        Ok(MessageId(id))
    }

    pub(super) fn outbox_get_mut(&mut self, id: u64) -> Option<&mut OutMsg> {
        let idx = usize::try_from(id.checked_sub(self.out_base)?).ok()?;
        self.outbox.get_mut(idx)?.as_mut()
    }

    pub(super) fn outbox_get(&self, id: u64) -> Option<&OutMsg> {
        let idx = usize::try_from(id.checked_sub(self.out_base)?).ok()?;
        self.outbox.get(idx)?.as_ref()
    }

    /// Takes a reliable message out of the outbox (it has an outcome).
    fn take_out(&mut self, id: u64) -> Option<OutMsg> {
        let idx = usize::try_from(id.checked_sub(self.out_base)?).ok()?;
        let msg = self.outbox.get_mut(idx)?.take()?;
        while let Some(None) = self.outbox.front() {
            self.outbox.pop_front();
            self.out_base += 1;
        }
        self.pending_messages -= 1;
        self.pending_bytes -= msg.payload.len();
        Some(msg)
    }

    fn take_amo(&mut self, id: u64) -> Option<AmoOut> {
        let idx = usize::try_from(id.checked_sub(self.amo_base)?).ok()?;
        let msg = self.amo_out.get_mut(idx)?.take()?;
        self.pending_messages -= 1;
        self.pending_bytes -= msg.payload.len();
        self.advance_amo_front();
        Some(msg)
    }

    /// Drops the at-most-once queue's front slots whose messages have an outcome; the floor
    /// the peer is told of rises with them.
    #[inline]
    fn advance_amo_front(&mut self) {
        let before = self.amo_base;
        while let Some(None) = self.amo_out.front() {
            self.amo_out.pop_front();
            self.amo_base += 1;
        }
        if self.amo_base != before {
            self.amo_floor_dirty = true;
        }
    }

    /// An acknowledged packet carried a fragment of each at-most-once message `id..id +
    /// count` (a MESSAGES run, or one message or fragment): each one with every fragment now
    /// acknowledged is Delivered, as [`take_amo`](Self::take_amo) and
    /// [`deliver_outcome`](Self::deliver_outcome) would do one at a time, with the front of
    /// the queue moved once. Out of line: inlined, it costs the ACK path of other packets
    /// registers.
    #[inline(never)]
    fn amo_acked(&mut self, id: u64, count: u32, latencies: &mut Latencies) {
        let end = id + u64::from(count);
        for id in id.max(self.amo_base)..end {
            let idx = (id - self.amo_base) as usize;
            let Some(slot) = self.amo_out.get_mut(idx) else {
                break;
            };
            let Some(m) = slot else {
                continue;
            };
            m.acked += 1;
            if m.acked < m.count {
                continue;
            }
            let Some(m) = slot.take() else {
                continue;
            };
            self.pending_messages -= 1;
            self.pending_bytes -= m.payload.len();
            latencies.add(m.queued_at, &mut self.stats.latency);
            self.deliver_outcome(id, Guarantee::AtMostOnce);
            self.give_buffer(m.payload);
        }
        self.advance_amo_front();
    }

    /// Reports a message Delivered (its latency is recorded by the caller).
    fn deliver_outcome(&mut self, id: u64, guarantee: Guarantee) {
        self.stats.delivered += 1;
        self.events.push_back(Event::Delivered {
            id: MessageId(id),
            guarantee,
        });
    }

    fn undeliverable(
        &mut self,
        id: u64,
        guarantee: Guarantee,
        reason: UndeliverableReason,
        payload: Vec<u8>,
    ) {
        log::debug!(
            "conn {}: {guarantee} id {id} undeliverable: {reason}",
            self.local_cid
        );
        self.stats.undeliverable += 1;
        self.events.push_back(Event::Undeliverable {
            id: MessageId(id),
            guarantee,
            reason,
            payload,
        });
    }

    /// The peer confirmed reliable message `id`.
    fn complete_reliable(&mut self, latencies: &mut Latencies, id: u64) {
        if let Some(msg) = self.take_out(id) {
            latencies.add(msg.queued_at, &mut self.stats.latency);
            self.deliver_outcome(id, msg.guarantee);
            self.give_buffer(msg.payload);
        }
    }

    /// Gives up on reliable message `id` and tells the peer to stop waiting for it.
    pub(super) fn abandon_reliable(&mut self, id: u64, reason: UndeliverableReason) {
        let Some(msg) = self.take_out(id) else {
            return;
        };
        if self.state != State::Closed && self.state != State::Draining {
            self.forward.push(ForwardEntry {
                id,
                ordered: msg.chan_seq.map(|s| (msg.channel, s)),
            });
            self.forward_dirty = true;
        }
        self.undeliverable(id, msg.guarantee, reason, msg.payload);
    }

    fn abandon_amo(&mut self, id: u64, reason: UndeliverableReason) {
        if let Some(msg) = self.take_amo(id) {
            self.undeliverable(id, Guarantee::AtMostOnce, reason, msg.payload);
        }
    }

    /// Every pending message ends Undeliverable with `reason` (the connection is ending).
    pub(super) fn fail_all_pending(&mut self, reason: UndeliverableReason) {
        for id in self.out_base..self.out_base + self.outbox.len() as u64 {
            self.abandon_reliable(id, reason);
        }
        for id in self.amo_base..self.amo_base + self.amo_out.len() as u64 {
            self.abandon_amo(id, reason);
        }
        self.retx.clear();
        self.deadlines.clear();
        debug_assert_eq!(self.pending_messages, 0);
        debug_assert_eq!(self.pending_bytes, 0);
    }

    /// An acknowledged packet `pn` carried fragment `frag` of reliable message `id`: the
    /// fragment arrived, unless it was sent again since.
    #[inline]
    fn fragment_received(&mut self, pn: u64, id: u64, frag: u32) {
        if let Some(fr) = self
            .outbox_get_mut(id)
            .and_then(|msg| msg.frags.get_mut(frag as usize))
            && fr.state == FragState::InFlight(pn)
        {
            fr.state = FragState::Received;
        }
    }

    /// Sends fragment `frag` of reliable message `id` again, unless its budget is spent.
    /// `only_if` says which state it must still be in (so that a fragment is queued only
    /// once).
    pub(super) fn requeue(&mut self, id: u64, frag: u32, only_if: impl Fn(FragState) -> bool) {
        let Some(msg) = self.outbox_get_mut(id) else {
            return;
        };
        let Some(f) = msg.frags.get_mut(frag as usize) else {
            return;
        };
        if !only_if(f.state) {
            return;
        }
        if f.retransmits >= msg.max_retransmits {
            self.abandon_reliable(id, UndeliverableReason::RetriesExhausted);
            return;
        }
        f.retransmits += 1;
        f.state = FragState::Queued;
        self.retx.push_back((id, frag));
        self.stats.retransmissions += 1;
    }

    // ---------------------------------------------------------------- deadlines

    pub(super) fn arm_deadline_timer(&mut self) {
        // Drop stale entries from the top so the timer names a live deadline, and rebuild
        // the heap when stale entries dominate, so it stays proportional to pending messages.
        if self.deadlines.len() > 64 && self.deadlines.len() > 2 * self.pending_messages {
            let all = std::mem::take(&mut self.deadlines).into_vec();
            let live: Vec<_> = all
                .into_iter()
                .filter(|Reverse((d, rel, id))| self.deadline_is_live(*d, *rel, *id))
                .collect();
            self.deadlines = live.into();
        }
        while let Some(Reverse((d, rel, id))) = self.deadlines.peek().copied() {
            if self.deadline_is_live(d, rel, id) {
                break;
            }
            self.deadlines.pop();
        }
        let next = self.deadlines.peek().map(|Reverse((d, _, _))| *d);
        self.timers.set_opt(Timer::Deadline, next);
    }

    fn deadline_is_live(&self, d: Instant, reliable: bool, id: u64) -> bool {
        if reliable {
            // A reliable message keeps no copy of its deadline: each one with a deadline has
            // exactly one entry in the heap, and ids are never reused.
            self.outbox_get(id).is_some()
        } else {
            let idx = id.checked_sub(self.amo_base).map(|i| i as usize);
            idx.and_then(|i| self.amo_out.get(i))
                .and_then(|m| m.as_ref())
                .is_some_and(|m| m.deadline == Some(d))
        }
    }

    pub(super) fn expire_deadlines(&mut self, now: Instant) {
        while let Some(Reverse((d, rel, id))) = self.deadlines.peek().copied() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if !self.deadline_is_live(d, rel, id) {
                continue;
            }
            if rel {
                self.abandon_reliable(id, UndeliverableReason::DeadlinePassed);
            } else {
                self.abandon_amo(id, UndeliverableReason::DeadlinePassed);
            }
        }
        self.arm_deadline_timer();
        self.maybe_finish_shutdown(now);
    }

    // ---------------------------------------------------------------- acknowledgements

    /// Checks an ACK frame where it stands in its packet, before the frames after it take
    /// effect: acknowledging a packet never sent, or a deliberately skipped packet number, is
    /// a protocol violation (the connection closes).
    pub(super) fn check_ack(
        &mut self,
        now: Instant,
        ack: &AckFrame<'_>,
    ) -> Result<(), DatagramError> {
        if ack.largest >= self.ledger.next_pn()
            || ack.smallest() < self.config.initial_packet_number
        {
            return Err(self.protocol_violation(now, "ACK of a packet never sent"));
        }
        if acks_a_skipped_pn(&self.skipped_pns, ack) {
            return Err(self.protocol_violation(
                now,
                "ACK of a skipped packet number (optimistic acknowledgement)",
            ));
        }
        Ok(())
    }

    /// Processes an ACK frame that passed [`check_ack`](Self::check_ack): packets the peer
    /// received.
    pub(super) fn on_ack_frame(&mut self, now: Instant, ack: &AckFrame<'_>) {
        let base = self.ledger.base_pn();
        let mut newly = std::mem::take(&mut self.scratch);
        newly.clear();
        for r in ack.ranges() {
            let start = r.start.max(base);
            if start >= r.end {
                continue;
            }
            self.acked_pns
                .insert_with_new(start..r.end, |n| newly.push(n));
        }
        let mut largest_newly_acked = None;
        let mut latencies = Latencies::new(now);
        for r in &newly {
            for pn in r.clone() {
                if let Some(pkt) = self.on_packet_acked(now, pn, &mut latencies) {
                    if pn == ack.largest {
                        largest_newly_acked = Some(pkt);
                    }
                }
            }
        }
        latencies.finish(&mut self.stats.latency);
        let any_new = !newly.is_empty();
        self.scratch = newly;
        if self.largest_acked.is_none_or(|l| ack.largest > l) {
            self.largest_acked = Some(ack.largest);
        }
        if let Some(pkt) = largest_newly_acked {
            if pkt.ack_eliciting {
                let sample = now.saturating_duration_since(pkt.time);
                let delay = Duration::from_micros(ack.ack_delay_us);
                self.rtt.update(sample, delay, self.config.max_ack_delay);
                self.first_rtt_sample.get_or_insert(now);
            }
        }
        if any_new {
            self.pto_count = 0;
        }
        self.detect_lost(now);
        self.ledger.pop_settled();
        self.acked_pns.remove_below(self.ledger.base_pn());
        self.set_loss_timer(now);
        if self.state == State::Closing && self.close_acked {
            self.enter_closed(now);
        }
    }

    /// A packet was acknowledged for the first time. Returns it as it was. The latencies of the
    /// at-most-once messages it completes go to `latencies`.
    fn on_packet_acked(
        &mut self,
        now: Instant,
        pn: u64,
        latencies: &mut Latencies,
    ) -> Option<SentPacket> {
        self.ledger.mark_acked(pn);
        let pkt = *self.ledger.get(pn)?;
        if !pkt.lost {
            self.ledger.settle(pn, false)?;
            // RFC 9002 section 7.8: a window the sender does not fill (the application sends
            // less than it allows) must not grow, or it becomes a promise the path never kept.
            // The controller still hears of the delivery.
            if pkt.in_flight {
                let bytes = u64::from(pkt.size);
                let window_used = self.ledger.bytes_in_flight + bytes;
                if window_used.saturating_mul(2) >= self.cc.window() {
                    self.cc.on_packet_acked(now, pkt.time, bytes, &self.rtt);
                } else {
                    self.cc
                        .on_packet_acked_app_limited(now, pkt.time, bytes, &self.rtt);
                }
            }
        }
        // Spurious losses still tell us the fragments arrived.
        let mut frames = std::mem::take(&mut self.frame_scratch);
        frames.clear();
        frames.extend(self.ledger.frames_of(&pkt));
        for f in &frames {
            match *f {
                SentFrame::Reliable { id, frag } => self.fragment_received(pn, id, frag),
                SentFrame::ReliableRun { id, count } => {
                    // Usually settled already (by a MSG_ACK in the same packet as this ACK):
                    // nothing left of the run to look at.
                    for id in id.max(self.out_base)..id + u64::from(count) {
                        self.fragment_received(pn, id, 0);
                    }
                }
                SentFrame::AmoRun { id, count } => {
                    if !pkt.lost {
                        self.amo_acked(id, count, latencies);
                    }
                }
                SentFrame::Amo { id, frag: _ } => {
                    if !pkt.lost {
                        self.amo_acked(id, 1, latencies);
                    }
                }
            }
        }
        self.frame_scratch = frames;
        if pkt.carried & carried::AMO_FLOOR != 0 {
            self.amo_floor_acked = self.amo_floor_acked.max(pkt.amo_floor);
        }
        if pkt.ack_upto > self.rx.ack_floor {
            // The peer heard of our ACK up to `ack_upto` (the highest `max_ack_ranges` ranges
            // below it): stop reporting below. Keep the ranges a while longer for duplicate
            // detection, then let them go.
            self.rx.ack_floor = pkt.ack_upto;
            let keep_from = pkt
                .ack_upto
                .saturating_sub(crate::limits::RECEIVED_PN_HISTORY);
            self.rx.received.remove_below(keep_from);
            self.rx.pn_floor = self.rx.pn_floor.max(keep_from);
        }
        if pkt.carried & carried::CLOSE != 0 {
            self.close_acked = true;
        }
        Some(pkt)
    }

    /// RFC 9002 section 6.1: packet and time thresholds.
    fn detect_lost(&mut self, now: Instant) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        self.loss_time = None;
        if self.ledger.eliciting_in_flight == 0 {
            // Every unsettled packet is in flight: nothing to declare lost or to time.
            debug_assert!(self.ledger.unsettled_below(u64::MAX).next().is_none());
            return;
        }
        let delay = self.rtt.loss_delay(self.config.timer_granularity);
        let threshold = self.config.packet_threshold;
        let mut lost = std::mem::take(&mut self.scratch);
        lost.clear();
        let mut loss_time: Option<Instant> = None;
        for (pn, pkt) in self.ledger.unsettled_below(largest) {
            if largest - pn >= threshold || pkt.time + delay <= now {
                lost.push(pn..pn + 1);
            } else {
                let t = pkt.time + delay;
                loss_time = Some(loss_time.map_or(t, |l: Instant| l.min(t)));
            }
        }
        self.loss_time = loss_time;
        for r in &lost {
            self.on_packet_lost(now, r.start);
        }
        if self.persistent_congestion(&lost) {
            log::debug!("conn {}: persistent congestion", self.local_cid);
            self.stats.persistent_congestion += 1;
            self.cc.on_persistent_congestion(now);
        }
        lost.clear();
        self.scratch = lost;
    }

    /// RFC 9002 section 7.6: whether the packets just declared lost (`lost`, in ascending
    /// order, already settled) establish persistent congestion. That takes two ack-eliciting
    /// packets sent more than three probe timeouts apart, both after the first RTT sample,
    /// with no packet sent between them acknowledged.
    fn persistent_congestion(&self, lost: &[Range<u64>]) -> bool {
        let Some(first_sample) = self.first_rtt_sample else {
            return false;
        };
        if lost.len() < 2 {
            return false;
        }
        let period = self
            .base_pto()
            .saturating_mul(PERSISTENT_CONGESTION_THRESHOLD);
        // The current run: its last lost ack-eliciting packet and the send time of its first.
        let mut run: Option<(u64, Instant)> = None;
        for pn in lost.iter().map(|r| r.start) {
            let Some(pkt) = self.ledger.get(pn) else {
                continue;
            };
            if !pkt.ack_eliciting || pkt.time <= first_sample {
                continue;
            }
            run = match run {
                Some((prev, start)) if !self.ledger.any_acked_between(prev, pn) => {
                    if pkt.time.saturating_duration_since(start) > period {
                        return true;
                    }
                    Some((pn, start))
                }
                _ => Some((pn, pkt.time)),
            };
        }
        false
    }

    fn on_packet_lost(&mut self, now: Instant, pn: u64) {
        let Some(pkt) = self.ledger.settle(pn, true) else {
            return;
        };
        log::trace!("conn {}: packet {pn} lost", self.local_cid);
        self.stats.packets_lost += 1;
        if pkt.in_flight {
            self.cc.on_congestion_event(now, pkt.time);
        }
        self.requeue_frames(pn, &pkt, true);
    }

    /// Queues again what a packet carried: fragments still in flight in it, and control
    /// frames (re-sent from current state).
    fn requeue_frames(&mut self, pn: u64, pkt: &SentPacket, lost: bool) {
        let mut frames = std::mem::take(&mut self.frame_scratch);
        frames.clear();
        frames.extend(self.ledger.frames_of(pkt));
        for f in &frames {
            match *f {
                SentFrame::Reliable { id, frag } => {
                    self.requeue(id, frag, |s| s == FragState::InFlight(pn));
                }
                SentFrame::ReliableRun { id, count } => {
                    for id in id.max(self.out_base)..id + u64::from(count) {
                        self.requeue(id, 0, |s| s == FragState::InFlight(pn));
                    }
                }
                SentFrame::Amo { id, .. } => {
                    if lost {
                        self.abandon_amo(id, UndeliverableReason::Lost);
                    }
                }
                SentFrame::AmoRun { id, count } => {
                    if lost {
                        for id in id..id + u64::from(count) {
                            self.abandon_amo(id, UndeliverableReason::Lost);
                        }
                    }
                }
            }
        }
        self.frame_scratch = frames;
        if pkt.ack_upto > self.rx.ack_floor {
            // Its ACK may have been the one the peer was to acknowledge (an ACK-only packet
            // with a PING): the next packet, a probe included, carries one again, or a floor
            // stuck below old gaps would keep every later ACK asking.
            self.rx.ack_pending = true;
        }
        let c = pkt.carried;
        if c & carried::MSG_ACK != 0 {
            self.rx.msg_ack_dirty = true;
            self.rx.ack_due = true;
        }
        if c & carried::FORWARD != 0 && !self.forward.is_empty() {
            self.forward_dirty = true;
            self.forward_cursor = 0;
        }
        if c & carried::REJECT != 0 && !self.rx.rejects.is_empty() {
            self.rx.reject_dirty = true;
            self.rx.reject_cursor = 0;
        }
        if c & carried::AMO_FLOOR != 0 && self.amo_floor_acked < self.amo_base {
            self.amo_floor_dirty = true;
        }
        if c & carried::CLOSE != 0 && self.state == State::Closing {
            self.close_pending = true;
        }
    }

    /// Sets the loss-detection timer: a time-threshold loss, or the probe timeout.
    pub(super) fn set_loss_timer(&mut self, now: Instant) {
        if !matches!(
            self.state,
            State::Established | State::Shutdown | State::Closing
        ) {
            // Draining sends nothing ack-eliciting: nothing to detect or probe.
            self.timers.stop(Timer::Loss);
            return;
        }
        if let Some(t) = self.loss_time {
            self.timers.set(Timer::Loss, t);
            return;
        }
        if self.ledger.eliciting_in_flight == 0 {
            self.timers.stop(Timer::Loss);
            return;
        }
        let base = self.base_pto();
        let pto = backoff(base, self.pto_count, self.config.max_rto);
        let from = self.ledger.last_eliciting_sent.unwrap_or(self.last_sent);
        // Never in the past: a timer that is already due when armed would spin a driver.
        let at = (from + pto).max(now + self.config.timer_granularity.min(pto));
        self.timers.set(Timer::Loss, at);
    }

    pub(super) fn on_loss_timer(&mut self, now: Instant) {
        if self.loss_time.is_some() {
            self.detect_lost(now);
            self.ledger.pop_settled();
            self.set_loss_timer(now);
            return;
        }
        if self.ledger.eliciting_in_flight == 0 {
            return;
        }
        // Probe timeout: send one or two ack-eliciting packets, preferably carrying the oldest
        // unacknowledged data again.
        self.pto_count += 1;
        self.stats.probes += 1;
        self.probes_pending = 2;
        log::trace!("conn {}: probe timeout #{}", self.local_cid, self.pto_count);
        // The oldest unsettled packet may only hold fragments already sent again by an
        // earlier probe: look for the oldest packet whose fragments are still its own.
        let before = self.retx.len();
        let mut probe_pkts = std::mem::take(&mut self.probe_scratch);
        probe_pkts.clear();
        probe_pkts.extend(
            self.ledger
                .unsettled_below(u64::MAX)
                .filter(|(_, p)| p.ack_eliciting)
                .map(|(pn, p)| (pn, *p)),
        );
        for (pn, pkt) in &probe_pkts {
            self.requeue_frames(*pn, pkt, false);
            if self.retx.len() > before {
                break;
            }
        }
        probe_pkts.clear();
        self.probe_scratch = probe_pkts;
        if self.retx.len() == before {
            self.ping_pending = true;
        }
        self.set_loss_timer(now);
        // The budget may have ended messages.
        self.maybe_finish_shutdown(now);
    }

    /// Processes a MSG_ACK frame: reliable messages the peer completed, and its flow credit.
    pub(super) fn on_msg_ack_frame(
        &mut self,
        now: Instant,
        f: &MsgAckFrame<'_>,
    ) -> Result<(), DatagramError> {
        let next_id = self.out_base + self.outbox.len() as u64;
        let highest = f.ranges().last().map_or(f.cumulative, |r| r.end);
        if f.cumulative > next_id || highest > next_id {
            return Err(self.protocol_violation(now, "MSG_ACK of a message never sent"));
        }
        if f.limit > self.peer_limit {
            self.peer_limit = f.limit;
            if !self.forward.is_empty() {
                self.forward_dirty = true;
                self.forward_cursor = 0;
            }
        }
        let mut latencies = Latencies::new(now);
        // The counters are settled once for the whole run.
        let (mut id, mut done, mut bytes) = (self.out_base, 0, 0);
        while id < f.cumulative {
            match self.outbox.pop_front() {
                Some(Some(msg)) => {
                    done += 1;
                    bytes += msg.payload.len();
                    latencies.add(msg.queued_at, &mut self.stats.latency);
                    self.deliver_outcome(id, msg.guarantee);
                    self.give_buffer(msg.payload);
                }
                Some(None) => {}
                None => break,
            }
            id += 1;
        }
        self.out_base = id;
        self.pending_messages -= done;
        self.pending_bytes -= bytes;
        while let Some(None) = self.outbox.front() {
            self.outbox.pop_front();
            self.out_base += 1;
        }
        let mut newly = std::mem::take(&mut self.scratch);
        newly.clear();
        for r in f.ranges() {
            let start = r.start.max(self.out_base);
            if start < r.end {
                self.msg_acked
                    .insert_with_new(start..r.end, |n| newly.push(n));
            }
        }
        for r in &newly {
            for id in r.clone() {
                self.complete_reliable(&mut latencies, id);
            }
        }
        latencies.finish(&mut self.stats.latency);
        newly.clear();
        self.scratch = newly;
        self.msg_acked.remove_below(self.out_base);
        let cum = f.cumulative;
        let acked = &self.msg_acked;
        self.forward
            .retain(|e| e.id >= cum && !acked.contains(e.id));
        if self.forward.is_empty() {
            self.forward_dirty = false;
        }
        self.maybe_finish_shutdown(now);
        Ok(())
    }

    /// Processes a REJECT frame: the peer wants these messages again.
    pub(super) fn on_reject_id(&mut self, id: u64) {
        let count = match self.outbox_get(id) {
            Some(m) => m.count,
            None => {
                // Given up already: the receiver skipped our FORWARD while it still held the
                // message, then dropped it. Say FORWARD again so it stops waiting.
                if self.forward.iter().any(|e| e.id == id) {
                    self.forward_dirty = true;
                    self.forward_cursor = 0;
                }
                return;
            }
        };
        // A copy still in flight may have reached the receiver before it rejected the
        // message, so everything not already queued is sent again.
        for frag in 0..count {
            self.requeue(id, frag, |s| s != FragState::Queued);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The binary search finds a skipped number in an ACK exactly when some range holds
        /// one.
        #[test]
        fn acks_a_skipped_pn_agrees_with_checking_every_number(
            skipped in proptest::collection::btree_set(0u64..400, 0..16),
            received in proptest::collection::btree_set(0u64..400, 1..120),
        ) {
            let skipped: VecDeque<u64> = skipped.into_iter().collect();
            let mut set = crate::rangeset::RangeSet::new(256);
            for &pn in &received {
                set.insert_one(pn);
            }
            let mut buf = [0u8; 2048];
            let mut w = crate::wire::Writer::new(&mut buf);
            crate::wire::emit_ack(&mut w, 0, set.iter().rev()).unwrap();
            let n = w.position();
            let Some(Ok(crate::wire::Frame::Ack(ack))) = crate::wire::frames(&buf[..n]).next() else {
                panic!("no ACK frame");
            };
            let naive = ack.ranges().any(|r| skipped.iter().any(|p| r.contains(p)));
            proptest::prop_assert_eq!(acks_a_skipped_pn(&skipped, &ack), naive);
        }
    }

    #[test]
    fn runs_of_latencies_record_what_each_one_recorded_alone_does() {
        #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(50);
        let sent = [0, 0, 3, 3, 3, 7, 0, 60, 60, 9].map(|ms| t0 + Duration::from_millis(ms));
        for k in 0..=sent.len() {
            let mut alone = LatencyHistogram::new();
            let mut runs = LatencyHistogram::new();
            let mut latencies = Latencies::new(now);
            for &q in &sent[..k] {
                alone.record(now.saturating_duration_since(q));
                latencies.add(q, &mut runs);
            }
            latencies.finish(&mut runs);
            assert_eq!(format!("{runs:?}"), format!("{alone:?}"));
            assert_eq!(runs.mean(), alone.mean());
        }
    }
}
