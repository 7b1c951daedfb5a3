//! The receiving side: packet numbers to acknowledge, the reliable window (what is received,
//! what is complete), the at-most-once window and its provable gaps, ordered channels and
//! reassembly.
//!
//! ```text
//!   reliable ids:   complete ─┐        received, not complete (held back or being processed)
//!                             v        v
//!   ... ■ ■ ■ ■ ■ ■ ■ | □ ■ ◩ □ ◩ ■ □ □ . . . . . . |
//!                     ^ cumulative                   ^ cumulative + window
//! ```
//! A reliable message counts as complete when it was handed to the application (or, in
//! acknowledge-after-processing mode, acknowledged by it), or when the sender abandoned it
//! before it arrived. MSG_ACK reports the cumulative point and the complete ids above it; the
//! sender reports Delivered from nothing else.

use std::time::Instant;

use arrayvec::ArrayVec;

use super::channel::{Held, OrderedChannel};
use super::reassembly::{FragmentOutcome, Reassembly, Space};
use super::{Connection, State};
use crate::config::{AckMode, Config};
use crate::dedup::DedupWindow;
use crate::error::DatagramError;
use crate::event::{AckToken, Event, Received};
use crate::limits::{ConnectionLimits, QUEUED_EVENT_COST};
use crate::message::Guarantee;
use crate::rangeset::RangeSet;
use crate::seq::{MessageId, PacketNumber};
use crate::timer::Timer;
use crate::wire::{self, Frame, MessageFrame, MessagesFrame, MessagesIter};

/// Frames of one packet parsed into a stack array before any takes effect; a packet with
/// more (rare: many tiny frames) is parsed again for the rest.
const INLINE_FRAMES: usize = 32;

/// What the frames of one packet did, for its acknowledgement and close handling.
struct PacketEffect {
    /// Every frame took effect (or was a recognised copy); `false`: dropped for lack of room,
    /// so the packet must not be acknowledged.
    accepted: bool,
    /// Some frame obliges an acknowledgement.
    eliciting: bool,
    /// Some frame other than MSG_ACK obliges one (MSG_ACK alone can wait for the ack delay).
    urgent: bool,
    /// The peer's CLOSE: code and reason.
    close: Option<(u64, String)>,
}

test_switch! {
    /// Whether the fast paths for messages in line may be taken: always, outside tests.
    fn fast_paths;
    /// Test switch: every message takes the general path, to check that the fast paths leave
    /// the same state and events.
    static GENERAL_PATH_ONLY;
}

#[cfg(test)]
thread_local! {
    /// Test counter: messages taken by each fast path (next in line unordered, next in line
    /// ordered, at-most-once in the window, a MESSAGES run in line unordered, and ordered,
    /// an at-most-once MESSAGES run in the window, a MESSAGES run ahead of the cumulative
    /// point unordered, and held back in its channel), so that tests can show the fast paths
    /// ran.
    pub(super) static FAST_PATH_HITS: std::cell::Cell<[u64; 8]> = const { std::cell::Cell::new([0; 8]) };
}

/// Counts a message taken by fast path `kind` (see `FAST_PATH_HITS`); nothing outside tests.
#[inline(always)]
fn count_fast_path(kind: usize) {
    #[cfg(test)]
    FAST_PATH_HITS.with(|h| {
        let mut v = h.get();
        v[kind] += 1;
        h.set(v);
    });
    let _ = kind;
}

#[derive(Debug)]
pub(super) struct RecvState {
    /// Packet numbers received (whose frames all took effect).
    pub received: RangeSet,
    pub largest: Option<(u64, Instant)>,
    /// Packets older than this are no longer tracked and are dropped.
    pub pn_floor: u64,
    /// The peer has received an ACK frame reporting every packet below this: later ACK frames
    /// report only what lies above (so permanent gaps, from losses and skipped numbers, stop
    /// costing bytes in every acknowledgement).
    pub ack_floor: u64,
    /// Received packets not yet acknowledged.
    pub ack_pending: bool,
    /// An acknowledgement should go out now.
    pub ack_due: bool,
    pub eliciting_since_ack: u32,

    /// Reliable ids complete.
    pub done: DedupWindow,
    /// Reliable ids received (held back, being processed, or complete).
    pub seen: DedupWindow,
    /// Flow credit granted to the peer (monotonic).
    pub limit: u64,
    pub msg_ack_dirty: bool,
    /// Reliable ids the application rejected and that have not arrived again.
    pub rejects: Vec<u64>,
    pub reject_dirty: bool,
    /// Where the current round of REJECT transmissions continues.
    pub reject_cursor: usize,

    /// At-most-once ids delivered (or given up as dead).
    pub amo: DedupWindow,

    pub channels: Vec<Option<Box<OrderedChannel>>>,
    pub reassembly: Reassembly,
    /// Payload bytes in undelivered `Message` events.
    pub queued_bytes: usize,
    /// Payload bytes held back in ordered channels.
    pub held_bytes: usize,
}

impl RecvState {
    pub fn new(config: &Config) -> Self {
        let first = config.initial_message_id;
        RecvState {
            received: RangeSet::new(config.ack_ranges_tracked),
            largest: None,
            pn_floor: config.initial_packet_number,
            ack_floor: config.initial_packet_number,
            ack_pending: false,
            ack_due: false,
            eliciting_since_ack: 0,
            done: DedupWindow::new(first, config.window as usize),
            seen: DedupWindow::new(first, config.window as usize),
            limit: first + config.window,
            msg_ack_dirty: false,
            rejects: Vec::new(),
            reject_dirty: false,
            reject_cursor: 0,
            amo: DedupWindow::new(first, config.amo_window as usize),
            channels: Vec::new(),
            reassembly: Reassembly::new(),
            queued_bytes: 0,
            held_bytes: 0,
        }
    }

    pub fn buffered_bytes(&self) -> usize {
        self.reassembly.bytes() + self.queued_bytes + self.held_bytes
    }

    /// Offers `seq` to an ordered channel, keeping the held-bytes total in step; returns the
    /// messages now in order through `ready`. A position more than a window ahead, or one
    /// already held, can only come from a broken or hostile peer.
    ///
    /// Returns `Ok(false)` when holding the item would leave no room for the largest message
    /// in line (see [`ConnectionLimits::admit_held`]): nothing changed, and the caller must not
    /// acknowledge the packet.
    pub fn offer(
        &mut self,
        channel: u8,
        seq: u64,
        item: Held,
        ready: &mut Vec<Held>,
        limits: &ConnectionLimits,
    ) -> Result<bool, &'static str> {
        let buffered = self.buffered_bytes();
        let ch = channel_slot(&mut self.channels, channel);
        if !limits.in_window(seq, ch.next()) {
            return Err("channel sequence number beyond the window");
        }
        if seq > ch.next() && !limits.admit_held(buffered, ch.hold_cost(seq, &item)) {
            return Ok(false);
        }
        let before = ch.held_bytes();
        let fresh = ch.offer(seq, item, |h| ready.push(h));
        self.held_bytes = self.held_bytes + ch.held_bytes() - before;
        if fresh || ch.is_past(seq) {
            Ok(true)
        } else {
            Err("channel sequence number used twice")
        }
    }
}

impl RecvState {
    /// Ordered channel `channel`, if it was used.
    #[inline]
    fn channel(&self, channel: u8) -> Option<&OrderedChannel> {
        self.channels
            .get(channel as usize)
            .and_then(Option::as_deref)
    }

    /// Whether `seq` lies ahead of ordered channel `channel`'s next position (a channel not yet
    /// used starts at 0).
    fn is_ahead(&self, channel: u8, seq: u64) -> bool {
        seq > self.channel(channel).map_or(0, OrderedChannel::next)
    }

    /// Whether ordered channel `channel` exists and `seq` is its next position, with nothing
    /// held (see [`OrderedChannel::is_next_alone`]).
    #[inline]
    fn is_next_alone(&self, channel: u8, seq: u64) -> bool {
        self.channel(channel)
            .is_some_and(|ch| ch.is_next_alone(seq))
    }
}

/// Moves `rest`, still at the first message of a run, past the `taken` messages a fast path
/// took, to the one it could not take (which the general path then gets).
fn skip_taken(rest: &mut MessagesIter<'_>, taken: u64) {
    if let Some(n) = usize::try_from(taken).ok().and_then(|n| n.checked_sub(1)) {
        rest.nth(n);
    }
}

/// The state of an ordered channel, creating the table (on first use: an idle connection
/// that never used ordering pays nothing for it) and the channel as needed.
fn channel_slot(
    channels: &mut Vec<Option<Box<OrderedChannel>>>,
    channel: u8,
) -> &mut OrderedChannel {
    if channels.is_empty() {
        channels.resize_with(256, || None);
    }
    channels[channel as usize].get_or_insert_with(Box::default)
}

impl Connection {
    /// `verified`: the caller already checked the datagram's tag with this connection's
    /// integrity check (the endpoint does, before routing).
    pub(super) fn on_datagram(
        &mut self,
        now: Instant,
        data: &[u8],
        verified: bool,
    ) -> Result<(), DatagramError> {
        self.stats.bytes_received += data.len() as u64;
        if self.state == State::Closed {
            return Err(DatagramError::Closed);
        }
        let opened = if verified {
            wire::open_verified(data, self.integrity().tag_len())
        } else {
            wire::open(data, self.integrity())
        };
        let (header, payload) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.stats.dropped_malformed += 1;
                log::trace!("conn {}: dropped malformed datagram: {e}", self.local_cid);
                return Err(e.into());
            }
        };
        if header.packet_type != wire::PacketType::Data {
            // Handshake packets belong to the endpoint, never to a connection.
            self.stats.dropped_stale += 1;
            return Err(DatagramError::UnknownConnection);
        }
        if header.conn_id != self.local_cid {
            self.stats.dropped_stale += 1;
            return Err(DatagramError::UnknownConnection);
        }
        // Before the first packet, expand around the agreed initial packet number.
        let reference = match self.rx.largest {
            Some((l, _)) => Some(PacketNumber(l)),
            None => self.rx.pn_floor.checked_sub(1).map(PacketNumber),
        };
        let pn = PacketNumber::expand(header.packet_number, reference).0;
        if pn < self.rx.pn_floor || self.rx.received.contains(pn) {
            // A copy: our acknowledgement may have been lost, so acknowledge again soon.
            self.stats.dropped_stale += 1;
            self.rx.ack_pending = true;
            self.schedule_ack(now, false);
            return Err(DatagramError::Stale);
        }
        // One parse: the frames go into a small array, and take effect only once the whole
        // payload parsed (a malformed datagram has no partial effect). A payload with more
        // frames than the array holds is parsed a second time to apply the rest.
        // The array starts uninitialised, so a packet of two frames writes two slots of
        // stack, not all of them.
        let mut parsed = ArrayVec::<Frame, INLINE_FRAMES>::new();
        let mut count = 0;
        for frame in wire::frames(payload) {
            match frame {
                Ok(f) => {
                    // Full: the frames past the array are parsed again below.
                    let _ = parsed.try_push(f);
                    count += 1;
                }
                Err(e) => {
                    self.stats.dropped_malformed += 1;
                    return Err(e.into());
                }
            }
        }
        if count == 0 {
            self.stats.dropped_malformed += 1;
            return Err(wire::WireError::EmptyPacket.into());
        }
        self.last_received = now;
        self.timers.set(Timer::Idle, now + self.config.idle_timeout);

        let mut effect = PacketEffect {
            accepted: true,
            eliciting: false,
            urgent: false,
            close: None,
        };
        // ACK frames (among the first INLINE_FRAMES) are checked where they stand, so that a
        // violation stops the frames after them as before, but applied after the packet's
        // other inline frames: a MSG_ACK in the same packet has then already settled the
        // messages it confirms, so the ACK does not mark each of their fragments received, and
        // a packet it declares lost does not queue them again.
        let inline = &parsed[..];
        let mut acks = false;
        for frame in inline {
            if let Frame::Ack(ack) = frame {
                self.check_ack(now, ack)?;
                acks = true;
            } else if self.apply_frame(now, frame, &mut effect)? {
                return Ok(());
            }
        }
        if acks {
            for frame in inline {
                if let Frame::Ack(ack) = frame {
                    self.on_ack_frame(now, ack);
                    if self.state == State::Closed {
                        return Ok(());
                    }
                }
            }
        }
        if count > INLINE_FRAMES {
            for frame in wire::frames(payload).skip(INLINE_FRAMES) {
                // Parsed above: an error here cannot happen, but is handled as malformed.
                if self.apply_frame(now, &frame?, &mut effect)? {
                    return Ok(());
                }
            }
        }
        let PacketEffect {
            accepted,
            eliciting,
            urgent,
            close,
        } = effect;
        if accepted {
            self.stats.packets_received += 1;
            self.rx.received.insert_one(pn);
            // A late packet below what the peer already heard of must still be reported.
            self.rx.ack_floor = self.rx.ack_floor.min(pn);
            if let Some(min) = self.rx.received.min() {
                self.rx.pn_floor = self.rx.pn_floor.max(min);
            }
            let in_order = self.rx.largest.is_none_or(|(l, _)| pn == l + 1);
            if self.rx.largest.is_none_or(|(l, _)| pn > l) {
                self.rx.largest = Some((pn, now));
            }
            self.rx.ack_pending = true;
            if eliciting && !urgent {
                self.schedule_ack(now, false);
            } else if eliciting {
                self.rx.eliciting_since_ack += 1;
                let immediate = !in_order
                    || self.rx.eliciting_since_ack >= self.config.ack_eliciting_threshold
                    || close.is_some();
                self.schedule_ack(now, immediate);
            }
        } else {
            self.stats.dropped_no_room += 1;
        }
        if let Some((code, reason)) = close {
            self.rx.ack_due = true;
            self.enter_draining(now, code, reason);
        }
        self.maybe_finish_shutdown(now);
        Ok(())
    }

    /// Applies one frame of a parsed packet, accumulating its effect on the packet's handling.
    /// Returns `Ok(true)` when the connection closed and the rest of the packet must be ignored.
    ///
    /// Inlined into the loops over a packet's frames: MESSAGE frames, most of the traffic, are
    /// handled here; the other kinds take one call.
    #[inline(always)]
    fn apply_frame(
        &mut self,
        now: Instant,
        frame: &Frame<'_>,
        effect: &mut PacketEffect,
    ) -> Result<bool, DatagramError> {
        let eliciting = frame.is_ack_eliciting();
        effect.eliciting |= eliciting;
        effect.urgent |= eliciting && !matches!(frame, Frame::MsgAck(_));
        match frame {
            Frame::Message(m) => effect.accepted &= self.on_message_frame(now, m),
            Frame::Messages(b) => effect.accepted &= self.on_messages_frame(now, b),
            _ => self.apply_control_frame(now, frame, effect)?,
        }
        if let Some(why) = self.violation.take() {
            return Err(self.protocol_violation(now, why));
        }
        Ok(self.state == State::Closed)
    }

    /// [`apply_frame`](Self::apply_frame) for the frames other than MESSAGE (one given here is
    /// handled all the same).
    fn apply_control_frame(
        &mut self,
        now: Instant,
        frame: &Frame<'_>,
        effect: &mut PacketEffect,
    ) -> Result<(), DatagramError> {
        match frame {
            Frame::Padding { .. } | Frame::Ping => {}
            Frame::Ack(ack) => {
                self.check_ack(now, ack)?;
                self.on_ack_frame(now, ack);
            }
            Frame::MsgAck(m) => {
                if self.state != State::Draining {
                    self.on_msg_ack_frame(now, m)?;
                }
            }
            Frame::Message(m) => effect.accepted &= self.on_message_frame(now, m),
            Frame::Messages(b) => effect.accepted &= self.on_messages_frame(now, b),
            Frame::Forward(f) => {
                for e in f.entries() {
                    effect.accepted &= self.on_forward_entry(now, e);
                }
            }
            Frame::Reject(r) => {
                for id in r.ids() {
                    self.on_reject_id(id);
                }
            }
            Frame::AmoFloor { floor } => self.on_amo_floor(now, *floor),
            Frame::Close(c) => {
                let reason = String::from_utf8_lossy(c.reason).into_owned();
                effect.close = Some((c.code, reason));
            }
        }
        Ok(())
    }

    /// Arranges for an acknowledgement: now, or within the maximum ack delay.
    pub(super) fn schedule_ack(&mut self, now: Instant, immediate: bool) {
        if immediate {
            self.rx.ack_due = true;
            self.timers.stop(Timer::Ack);
        } else if self.timers.get(Timer::Ack).is_none() && !self.rx.ack_due {
            self.timers.set(Timer::Ack, now + self.config.max_ack_delay);
        }
    }

    /// Returns whether the frame took effect (or was recognised as a copy); `false` means it
    /// was dropped for lack of room and the packet must not be acknowledged.
    #[inline(always)]
    fn on_message_frame(&mut self, now: Instant, m: &MessageFrame<'_>) -> bool {
        if !matches!(self.state, State::Established | State::Shutdown) {
            return false;
        }
        if m.guarantee.is_reliable() {
            self.on_reliable_message(now, m)
        } else {
            self.on_amo_message(now, m)
        }
    }

    /// A MESSAGES frame: each message as if in a MESSAGE frame of its own, in order, up to a
    /// protocol violation (which stops the frames after it, as it would stop those MESSAGE
    /// frames). Returns whether every one took effect.
    #[inline(always)]
    fn on_messages_frame(&mut self, now: Instant, b: &MessagesFrame<'_>) -> bool {
        let mut rest = b.messages();
        let id = b.first_id();
        if !matches!(self.state, State::Established | State::Shutdown) {
            // Every message is refused below, as alone.
        } else if !b.guarantee().is_reliable() {
            self.take_amo_run(b, &mut rest);
        } else if self.is_next_in_line(id) {
            // In line means at the cumulative point, so within the window.
            match b.first_seq() {
                None => self.take_run_in_line::<false>(b, &mut rest),
                Some(seq) if self.rx.is_next_alone(b.channel(), seq) => {
                    self.take_run_in_line::<true>(b, &mut rest);
                }
                Some(_) => self.take_run_ahead(now, b, &mut rest),
            }
        } else {
            self.take_run_ahead(now, b, &mut rest);
        }
        let mut accepted = true;
        for m in rest {
            accepted &= self.on_message_frame(now, &m);
            if self.violation.is_some() {
                break;
            }
        }
        accepted
    }

    fn check_fragment_caps(&self, m: &MessageFrame<'_>) -> bool {
        m.fragment
            .is_none_or(|f| self.limits.admit_fragment(f.count, f.total_len))
    }

    /// A reliable MESSAGE frame: the next message in line takes the short path, inlined with
    /// the checks before it (an ordered one only if also next in its channel); any other goes to
    /// [`on_reliable_arrival`](Self::on_reliable_arrival).
    #[inline(always)]
    fn on_reliable_message(&mut self, now: Instant, m: &MessageFrame<'_>) -> bool {
        let id = m.id;
        let base = self.rx.done.base();
        if id < base {
            self.stats.duplicates_suppressed += 1;
            return true;
        }
        if !self.limits.in_window(id, base) || !self.check_fragment_caps(m) {
            return false;
        }
        if self.is_next_in_line(id) {
            match m.chan_seq {
                None => return self.on_next_in_line::<false>(now, m),
                Some(seq) if self.rx.is_next_alone(m.channel, seq) => {
                    return self.on_next_in_line::<true>(now, m);
                }
                Some(_) => {}
            }
        }
        self.on_reliable_arrival(now, m)
    }

    /// Whether reliable message `id` is the next one expected, with nothing above it received
    /// or complete, in acknowledge-on-receipt mode.
    #[inline(always)]
    fn is_next_in_line(&self, id: u64) -> bool {
        fast_paths()
            && self.config.ack_mode == AckMode::OnReceipt
            && self.rx.done.is_empty_at(id)
            && self.rx.seen.is_empty_at(id)
    }

    /// A reliable message within the window other than the next in line: a copy, one that
    /// arrived out of order, an ordered one, or any in acknowledge-after-processing mode.
    fn on_reliable_arrival(&mut self, now: Instant, m: &MessageFrame<'_>) -> bool {
        let id = m.id;
        let seen = self.rx.seen.contains(id);
        if !seen && self.rx.done.contains(id) {
            // Abandoned by the sender before it arrived: never delivered.
            return true;
        }
        let duplicate_delivery = seen;
        if seen
            && (m.guarantee == Guarantee::ExactlyOnce
                || m.chan_seq.is_some()
                || m.fragment.is_some())
        {
            // A copy. At-least-once copies are handed over again only when whole: a lone
            // retransmitted fragment would start a reassembly that can never finish.
            self.stats.duplicates_suppressed += 1;
            return true;
        }
        let payload = match self.take_payload(now, Space::Reliable, m) {
            Ok(p) => p,
            Err(accepted) => return accepted,
        };
        if duplicate_delivery {
            // At-least-once, unordered: a copy of a message already handed over.
            self.stats.duplicates_delivered += 1;
            self.hand_over(id, m.channel, m.guarantee, false, payload, false);
            return true;
        }
        if self.rx.seen.contains(id + 1) {
            // A later message arrived first: this one repairs a loss (or was reordered), and
            // the sender is waiting for its acknowledgement. Do not hold it for the ack delay.
            self.schedule_ack(now, true);
        }
        let _ = self.rx.seen.insert(id);
        let accepted = match m.chan_seq {
            None => {
                self.hand_over(id, m.channel, m.guarantee, false, payload, true);
                true
            }
            Some(seq) => {
                let held = self.offer_ordered(id, m.channel, seq, m.guarantee, payload);
                if !held && m.fragment.is_some() {
                    // Reassembled but no room to hold it: the packets of its other fragments
                    // were acknowledged, so the sender would only send the completing one
                    // again, which cannot rebuild the message. Ask for all of it.
                    self.request_again(now, id);
                }
                held
            }
        };
        if accepted {
            if let Some(pos) = self.rx.rejects.iter().position(|&r| r == id) {
                self.rx.rejects.swap_remove(pos);
            }
        }
        accepted
    }

    /// The common case in order: a reliable message, acknowledged on receipt, that is the next
    /// one expected, with nothing above it received or complete; if ordered, also the next
    /// position of its channel, with nothing held there. The general path would find it
    /// neither seen nor complete and no later message arrived first, and its channel would
    /// deliver it at once and nothing after it; handing it over completes it, so both windows
    /// move past it, to empty windows at `id + 1` (and the channel to its next position).
    /// `ORDERED`: whether the message has a channel position.
    fn on_next_in_line<const ORDERED: bool>(&mut self, now: Instant, m: &MessageFrame<'_>) -> bool {
        let id = m.id;
        let payload = match self.take_payload(now, Space::Reliable, m) {
            Ok(p) => p,
            Err(accepted) => return accepted,
        };
        count_fast_path(usize::from(ORDERED));
        if ORDERED {
            self.channel_mut(m.channel).pass_next_alone();
        }
        self.hand_over(id, m.channel, m.guarantee, ORDERED, payload, false);
        self.rx.seen.pass_empty_base();
        self.rx.done.pass_empty_base();
        self.completed_to(id + 1);
        true
    }

    /// [`on_next_in_line`](Self::on_next_in_line) for the messages of a MESSAGES frame whose
    /// first message is next in line (and, if `ORDERED`, next alone in its channel): each one
    /// then is too once the one before is handed over, so the windows and the channel move
    /// past the whole run at once. Takes messages from `rest` until one finds no room in the
    /// receive buffer, which stays in `rest` for the general path (to be dropped there).
    fn take_run_in_line<const ORDERED: bool>(
        &mut self,
        b: &MessagesFrame<'_>,
        rest: &mut MessagesIter<'_>,
    ) {
        let channel = b.channel();
        let start = rest.next_id();
        // Acknowledge-on-receipt (the run is in line): no token.
        let n = self.queue_run::<false>(
            rest,
            channel,
            b.guarantee(),
            ORDERED,
            0,
            3 + usize::from(ORDERED),
        );
        if n == 0 {
            return;
        }
        let end = start + n;
        if ORDERED {
            self.channel_mut(channel).pass_next_alone_run(n);
        }
        self.rx.seen.pass_empty_run(n);
        self.rx.done.pass_empty_run(n);
        self.completed_to(end);
    }

    /// The general path for the messages of a reliable MESSAGES frame that is not in line
    /// (after a loss, or a copy), made once for the run when every id is new and within the
    /// window and no rejection is pending: unordered, each one is handed over and completes
    /// (acknowledge-on-receipt mode only); ordered, each one is held back in its channel, whose
    /// positions must all lie ahead of the next one, free and within the window. The windows
    /// (and the cumulative point) then move once for the run. Takes messages from `rest` until
    /// one finds no room in the receive buffer, which stays in `rest` for the general path (to
    /// be dropped there); a run that does not qualify stays whole in `rest`.
    fn take_run_ahead(&mut self, now: Instant, b: &MessagesFrame<'_>, rest: &mut MessagesIter<'_>) {
        let ordered = b.first_seq();
        if !fast_paths()
            || !self.rx.rejects.is_empty()
            || (ordered.is_none() && self.config.ack_mode != AckMode::OnReceipt)
        {
            return;
        }
        let (start, n) = (rest.next_id(), b.len() as u64);
        // The seen window moves with the done one (`advance_completed`, `pass_empty_run`),
        // and both hold the window: one offset serves both.
        let base = self.rx.done.base();
        debug_assert_eq!(base, self.rx.seen.base());
        // `start + n - 1` is a varint (the frame was validated): no overflow.
        if start < base || !self.limits.in_window(start + n - 1, base) {
            return;
        }
        // Within the window, which each dedup window holds whole: the offset and the length
        // fit a usize.
        let (at, len) = ((start - base) as usize, n as usize);
        if !self.rx.done.is_vacant_run(at, len) || !self.rx.seen.is_vacant_run(at, len) {
            return;
        }
        let (channel, guarantee) = (b.channel(), b.guarantee());
        if let Some(seq) = ordered {
            // A channel not used yet is left to the general path, which creates it.
            let Some(ch) = self
                .rx
                .channels
                .get(channel as usize)
                .and_then(Option::as_deref)
            else {
                return;
            };
            // `seq + n - 1` is a varint too.
            if !self.limits.in_window(seq + n - 1, ch.next()) || !ch.is_vacant_run(seq, n) {
                return;
            }
        }
        // Asked before the run changes anything: the general path asks for each message before
        // inserting it, and only the last one's successor can have arrived already.
        let repaired = self.rx.seen.contains(start + n);
        let taken = match ordered {
            None => self.queue_run::<false>(rest, channel, guarantee, false, 0, 6),
            Some(first_seq) => self.queue_run::<true>(rest, channel, guarantee, true, first_seq, 7),
        } as usize;
        if taken == 0 {
            return;
        }
        if taken == len && repaired {
            self.schedule_ack(now, true);
        }
        self.rx.seen.fill_run(at, taken);
        if ordered.is_none() {
            // As `mark_complete` for each, with the windows moved once.
            self.rx.done.fill_run(at, taken);
            self.advance_completed();
        }
    }

    /// Queues the messages of `rest` for the application, without tokens, or with `HOLD` holds
    /// them back in ordered channel `channel` from position `first_seq` on, as the general
    /// path would; stops at one that finds no room (to take it, or to hold it), which stays in
    /// `rest` for the general path (to be dropped there). Returns how many were taken.
    /// `kind`: the fast path counted in tests.
    #[inline(always)]
    fn queue_run<const HOLD: bool>(
        &mut self,
        rest: &mut MessagesIter<'_>,
        channel: u8,
        guarantee: Guarantee,
        ordered: bool,
        first_seq: u64,
        kind: usize,
    ) -> u64 {
        let start = rest.next_id();
        let mut ready = if HOLD {
            std::mem::take(&mut self.held_scratch)
        } else {
            Vec::new()
        };
        // Walked on a copy, which can stay in registers; `rest` catches up at the end.
        let mut it = rest.clone();
        loop {
            let id = it.next_id();
            let Some(payload) = it.next_payload() else {
                *rest = it;
                break;
            };
            let len = payload.len();
            if !self
                .limits
                .admit_recv_bytes(self.rx.buffered_bytes(), len + QUEUED_EVENT_COST)
            {
                // Rare.
                skip_taken(rest, id - start);
                break;
            }
            let mut buf = self.take_buffer(len);
            buf.extend_from_slice(payload);
            if HOLD {
                let item = Held::Message {
                    id,
                    guarantee,
                    payload: buf,
                };
                // `RecvState::offer` checks the room to hold it, as on the general path.
                let seq = first_seq + (id - start);
                let held = self.rx.offer(channel, seq, item, &mut ready, &self.limits);
                debug_assert!(held.is_ok() && ready.is_empty());
                if held != Ok(true) {
                    skip_taken(rest, id - start);
                    break;
                }
            } else {
                self.queue_message(id, channel, guarantee, ordered, buf, None);
            }
            count_fast_path(kind);
        }
        if HOLD {
            self.held_scratch = ready;
        }
        rest.next_id() - start
    }

    /// [`on_amo_in_window`](Self::on_amo_in_window) for the messages of an at-most-once
    /// MESSAGES frame whose ids all lie in the window without moving it and none of which
    /// arrived before: the window is checked and filled once for the run. Takes messages from
    /// `rest` until one finds no room in the receive buffer, which stays in `rest` for the
    /// general path (to be dropped there); a run that does not qualify stays whole in `rest`.
    fn take_amo_run(&mut self, b: &MessagesFrame<'_>, rest: &mut MessagesIter<'_>) {
        if !fast_paths() {
            return;
        }
        let start = rest.next_id();
        // Ids and the base stay below 2^62, so an id below the base wraps far above any window.
        let offset = start.wrapping_sub(self.rx.amo.base());
        let n = b.len() as u64;
        if offset >= self.config.amo_window || n > self.config.amo_window - offset {
            return;
        }
        // Below `amo_window`, which is at most the window's capacity: fits a usize.
        let offset = offset as usize;
        if !self.rx.amo.is_vacant_run(offset, n as usize) {
            return;
        }
        let taken = self.queue_run::<false>(rest, b.channel(), Guarantee::AtMostOnce, false, 0, 5);
        if taken > 0 {
            self.rx.amo.fill_run(offset, taken as usize);
        }
    }

    /// The whole payload of a MESSAGE frame: copied into a pooled buffer, or, for a fragment,
    /// the reassembled message once its last fragment arrives. `Err(accepted)` when there is
    /// nothing to deliver yet, with whether the frame took effect: a fragment stored, or a
    /// reliable copy, counts as taken; a dropped one (no room, conflict, an at-most-once copy)
    /// does not, so its packet is not acknowledged.
    #[inline(always)]
    fn take_payload(
        &mut self,
        now: Instant,
        space: Space,
        m: &MessageFrame<'_>,
    ) -> Result<Vec<u8>, bool> {
        let Some(frag) = m.fragment else {
            if !self.limits.admit_recv_bytes(
                self.rx.buffered_bytes(),
                m.payload.len() + QUEUED_EVENT_COST,
            ) {
                return Err(false);
            }
            let mut buf = self.take_buffer(m.payload.len());
            buf.extend_from_slice(m.payload);
            return Ok(buf);
        };
        self.reassemble(now, space, m, frag)
    }

    /// [`take_payload`](Self::take_payload) for a fragment.
    fn reassemble(
        &mut self,
        now: Instant,
        space: Space,
        m: &MessageFrame<'_>,
        frag: wire::Fragment,
    ) -> Result<Vec<u8>, bool> {
        let mut buffered = self.rx.buffered_bytes();
        if space == Space::Reliable
            && m.chan_seq
                .is_some_and(|seq| self.rx.is_ahead(m.channel, seq))
        {
            // It will be held back once complete: it must leave the message in line room, as
            // held messages do (`ConnectionLimits::admit_held`, the same sum).
            buffered = buffered.saturating_add(self.limits.in_line_reserve());
        }
        let reassembly = &mut self.rx.reassembly;
        match reassembly.on_fragment(now, space, m, frag, &self.limits, buffered) {
            FragmentOutcome::Stored => {
                self.arm_reassembly_timer();
                Err(true)
            }
            FragmentOutcome::Duplicate => Err(space == Space::Reliable),
            FragmentOutcome::Conflict => {
                // Dropped, so the packet is not acknowledged (PROTOCOL.md 4.2).
                if space == Space::Reliable {
                    self.stats.dropped_malformed += 1;
                }
                Err(false)
            }
            FragmentOutcome::NoRoom => Err(false),
            FragmentOutcome::Complete(data) => Ok(data),
        }
    }

    fn channel_mut(&mut self, channel: u8) -> &mut OrderedChannel {
        channel_slot(&mut self.rx.channels, channel)
    }

    fn offer_ordered(
        &mut self,
        id: u64,
        channel: u8,
        seq: u64,
        guarantee: Guarantee,
        payload: Vec<u8>,
    ) -> bool {
        if self.channel_mut(channel).is_past(seq) {
            // Delivered before and rejected by the application: deliver the new copy now.
            self.hand_over(id, channel, guarantee, true, payload, true);
            return true;
        }
        let mut ready = std::mem::take(&mut self.held_scratch);
        let item = Held::Message {
            id,
            guarantee,
            payload,
        };
        let accepted = match self.rx.offer(channel, seq, item, &mut ready, &self.limits) {
            Ok(true) => true,
            Ok(false) => {
                // No room to hold it back: not received after all.
                self.rx.seen.remove(id);
                false
            }
            Err(why) => {
                self.rx.seen.remove(id);
                self.violation = Some(why);
                true
            }
        };
        self.hand_over_in_order(channel, ready);
        accepted
    }

    /// Hands over the messages an ordered channel released, in order, and keeps the emptied
    /// vector as the scratch for the next time.
    ///
    /// Each one handed over completes (acknowledge-on-receipt mode) as
    /// [`mark_complete`](Self::mark_complete) would make it, with the windows and the
    /// cumulative point moved once for them all: the same end state, since the completions
    /// only add ids and the moves only go forward.
    fn hand_over_in_order(&mut self, channel: u8, mut ready: Vec<Held>) {
        let on_receipt = self.config.ack_mode == AckMode::OnReceipt;
        let mut completed = false;
        for h in ready.drain(..) {
            if let Held::Message {
                id,
                guarantee,
                payload,
            } = h
            {
                self.hand_over(id, channel, guarantee, true, payload, false);
                completed |= on_receipt && self.rx.done.insert(id).is_ok();
            }
        }
        if completed {
            self.advance_completed();
        }
        self.held_scratch = ready;
    }

    /// Queues a message for the application. `completes`: this is the reliable message's
    /// first hand-over, which in acknowledge-on-receipt mode makes it complete.
    #[inline(always)]
    fn hand_over(
        &mut self,
        id: u64,
        channel: u8,
        guarantee: Guarantee,
        ordered: bool,
        payload: Vec<u8>,
        completes: bool,
    ) {
        let after_processing = self.config.ack_mode == AckMode::AfterProcessing;
        let token = match &self.token_sink {
            Some(sink) if after_processing && guarantee.is_reliable() => Some(AckToken {
                id,
                sink: Some(sink.clone()),
            }),
            _ => None,
        };
        self.queue_message(id, channel, guarantee, ordered, payload, token);
        if completes && !after_processing {
            self.mark_complete(id);
        }
    }

    /// The `Message` event of [`hand_over`](Self::hand_over), queued with `token`.
    #[inline(always)]
    fn queue_message(
        &mut self,
        id: u64,
        channel: u8,
        guarantee: Guarantee,
        ordered: bool,
        payload: Vec<u8>,
        token: Option<AckToken>,
    ) {
        log::trace!("conn {}: deliver {guarantee} id {id}", self.local_cid);
        self.stats.messages_received += 1;
        self.rx.queued_bytes += payload.len() + QUEUED_EVENT_COST;
        self.events.push_back(Event::Message(Received {
            id: MessageId(id),
            channel,
            guarantee,
            ordered,
            payload,
            token,
        }));
    }

    /// Reliable message `id` is complete: it moves the cumulative point and is reported.
    fn mark_complete(&mut self, id: u64) {
        if self.rx.done.insert(id).is_ok() {
            self.advance_completed();
        }
    }

    /// After ids were inserted in the done window: the cumulative point moves past every
    /// complete id at the front, the seen window follows, and the completion is reported.
    /// Several insertions may share one call: the end state is the same as one call each.
    fn advance_completed(&mut self) {
        let cum = self.rx.done.advance_contiguous();
        self.rx.seen.advance_to(cum);
        self.completed_to(cum);
    }

    /// Bookkeeping after a completion, with the cumulative point now at `cum`: rejections no
    /// longer wanted are dropped, the flow credit follows, and MSG_ACK is due.
    fn completed_to(&mut self, cum: u64) {
        if !self.rx.rejects.is_empty() {
            let done = &self.rx.done;
            self.rx.rejects.retain(|&r| r >= cum && !done.contains(r));
        }
        self.rx.limit = self.rx.limit.max(cum + self.config.window);
        self.rx.msg_ack_dirty = true;
    }

    /// The application acknowledged a processed message.
    pub(super) fn rx_complete(&mut self, now: Instant, id: u64) {
        if !matches!(self.state, State::Established | State::Shutdown) {
            return;
        }
        if id >= self.rx.done.base() && self.rx.seen.contains(id) {
            self.mark_complete(id);
            self.schedule_ack(now, false);
        }
    }

    /// The application rejected a message (or dropped its token): ask for it again.
    pub(super) fn rx_reject(&mut self, now: Instant, id: u64) {
        if !matches!(self.state, State::Established | State::Shutdown) {
            return;
        }
        if id < self.rx.done.base() || self.rx.done.contains(id) {
            return;
        }
        self.stats.rejected += 1;
        self.rx.seen.remove(id);
        self.request_again(now, id);
    }

    fn request_again(&mut self, now: Instant, id: u64) {
        if !self.rx.rejects.contains(&id) {
            self.rx.rejects.push(id);
        }
        self.rx.reject_dirty = true;
        self.rx.reject_cursor = 0;
        self.schedule_ack(now, true);
    }

    /// An at-most-once MESSAGE frame: one the window holds without moving takes the short
    /// path, inlined with the check for it; any other goes to
    /// [`on_amo_arrival`](Self::on_amo_arrival).
    #[inline(always)]
    fn on_amo_message(&mut self, now: Instant, m: &MessageFrame<'_>) -> bool {
        // Ids and the base stay below 2^62 (varints; the initial id is validated), so an id
        // below the base wraps to an offset far above any window.
        let offset = m.id.wrapping_sub(self.rx.amo.base());
        if fast_paths() && offset < self.config.amo_window {
            // `amo_window` is at most the window's capacity, so `offset` fits a usize.
            return self.on_amo_in_window(now, m, offset as usize);
        }
        self.on_amo_arrival(now, m)
    }

    /// An at-most-once message below the window's base or beyond `amo_window` from it.
    fn on_amo_arrival(&mut self, now: Instant, m: &MessageFrame<'_>) -> bool {
        let id = m.id;
        if !self.check_fragment_caps(m) {
            return false;
        }
        if id < self.rx.amo.base() || self.rx.amo.contains(id) {
            // Never sent twice: a copy, or an id given up. Not acknowledged, so the sender
            // can never count it Delivered on the strength of this packet.
            self.stats.duplicates_suppressed += 1;
            return false;
        }
        let cap = self.config.amo_window;
        if id >= self.rx.amo.base() + cap {
            self.amo_advance(id + 1 - cap);
        }
        let payload = match self.take_payload(now, Space::AtMostOnce, m) {
            Ok(p) => p,
            Err(accepted) => return accepted,
        };
        let _ = self.rx.amo.insert(id);
        self.hand_over(id, m.channel, Guarantee::AtMostOnce, false, payload, false);
        true
    }

    /// [`on_amo_message`](Self::on_amo_message) for an id the window holds without moving, at
    /// `offset` from its base (below `amo_window`): the general path's lookup and insert, made
    /// once.
    fn on_amo_in_window(&mut self, now: Instant, m: &MessageFrame<'_>, offset: usize) -> bool {
        let id = m.id;
        if !self.check_fragment_caps(m) {
            return false;
        }
        let Some(vacancy) = self.rx.amo.vacancy(offset) else {
            // Already inserted: a copy, as in the general path.
            self.stats.duplicates_suppressed += 1;
            return false;
        };
        let payload = match self.take_payload(now, Space::AtMostOnce, m) {
            Ok(p) => p,
            Err(accepted) => return accepted,
        };
        count_fast_path(2);
        self.rx.amo.fill(vacancy);
        self.hand_over(id, m.channel, Guarantee::AtMostOnce, false, payload, false);
        true
    }

    /// Moves the at-most-once window to `floor`, counting the ids passed over as lost.
    fn amo_advance(&mut self, floor: u64) {
        if floor <= self.rx.amo.base() {
            return;
        }
        let gaps = self.rx.amo.advance_to(floor);
        self.rx
            .reassembly
            .remove_below(Space::AtMostOnce, floor, |_| {});
        self.report_gaps(gaps);
    }

    fn report_gaps(&mut self, count: u64) {
        if count > 0 {
            self.stats.amo_gaps += count;
            log::debug!(
                "conn {}: {count} at-most-once messages lost",
                self.local_cid
            );
            // Consecutive losses merge into one event, so the queue of Lost events never
            // outgrows the Message events between them.
            if let Some(Event::Lost { count: queued }) = self.events.back_mut() {
                *queued = queued.saturating_add(count);
            } else {
                self.events.push_back(Event::Lost { count });
            }
        }
    }

    fn on_amo_floor(&mut self, _now: Instant, floor: u64) {
        self.amo_advance(floor);
    }

    /// The sender abandoned a reliable message. Returns whether the entry took effect.
    fn on_forward_entry(&mut self, now: Instant, e: wire::ForwardEntry) -> bool {
        let base = self.rx.done.base();
        if e.id < base {
            return true;
        }
        if !self.limits.in_window(e.id, base) {
            return false;
        }
        if self.rx.seen.contains(e.id) || self.rx.done.contains(e.id) {
            // Already here (it will complete normally) or already skipped.
            return true;
        }
        self.rx.reassembly.remove(Space::Reliable, e.id);
        if let Some(pos) = self.rx.rejects.iter().position(|&r| r == e.id) {
            self.rx.rejects.swap_remove(pos);
        }
        if let Some((channel, seq)) = e.ordered {
            let mut ready = std::mem::take(&mut self.held_scratch);
            let offered = self
                .rx
                .offer(channel, seq, Held::Skip, &mut ready, &self.limits);
            match offered {
                Ok(true) => {}
                Ok(false) => {
                    // No room to remember the skip: not taken; the sender will say it again.
                    self.held_scratch = ready;
                    return false;
                }
                Err(why) => {
                    self.violation = Some(why);
                    self.held_scratch = ready;
                    return false;
                }
            }
            self.hand_over_in_order(channel, ready);
        }
        self.mark_complete(e.id);
        self.schedule_ack(now, false);
        true
    }

    pub(super) fn arm_reassembly_timer(&mut self) {
        let t = self
            .rx
            .reassembly
            .next_expiry(self.config.reassembly_timeout);
        self.timers.set_opt(Timer::Reassembly, t);
    }

    pub(super) fn rx_expire_reassembly(&mut self, now: Instant) {
        let mut gone = Vec::new();
        self.rx
            .reassembly
            .expire(now, self.config.reassembly_timeout, |d| gone.push(d));
        for d in gone {
            log::debug!("conn {}: partial message {} expired", self.local_cid, d.id);
            match d.space {
                Space::Reliable => {
                    let id = d.id;
                    let still_wanted = id >= self.rx.done.base()
                        && !self.rx.done.contains(id)
                        && !self.rx.seen.contains(id);
                    if still_wanted {
                        self.request_again(now, id);
                    }
                }
                Space::AtMostOnce => {
                    // Dead: later fragments of it are refused, so it can never be reported
                    // Delivered; it is counted lost now.
                    if self.rx.amo.insert(d.id).is_ok() {
                        self.report_gaps(1);
                    }
                }
            }
        }
        self.arm_reassembly_timer();
    }

    /// A `Message` event was taken by the application.
    #[inline]
    pub(super) fn on_event_taken(&mut self, ev: &Event) {
        if let Event::Message(m) = ev {
            self.rx.queued_bytes =
                (self.rx.queued_bytes).saturating_sub(m.payload.len() + QUEUED_EVENT_COST);
        }
    }
}
