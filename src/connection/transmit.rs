//! Building datagrams: acknowledgements and control frames first, then retransmissions, then
//! new messages (oldest first across both id spaces), coalesced up to the datagram size.

use std::time::Instant;

use super::ledger::{Ledger, SentFrame, carried};
use super::send::{FragState, Frags, OutMsg};
use super::{Connection, State};
use crate::message::Guarantee;
use crate::seq::PacketNumber;
use crate::wire::{
    self, CloseFrame, ForwardEntry, Fragment, Frame, Header, MessageFrame, MessagesWriter,
    PacketType, WireError, Writer,
};

test_switch! {
    /// Whether new reliable messages may be written in one pass (MESSAGES frames) while
    /// at-most-once messages wait too; off in tests that compare with one frame per message.
    fn one_pass;
    /// Test switch: new messages go one frame at a time whenever at-most-once messages wait.
    static ONE_FRAME_AT_A_TIME;
}

test_switch! {
    /// Whether an at-most-once MESSAGES frame is recorded as one `AmoRun` ledger entry; off in
    /// tests that compare with one `Amo` entry per message (the same packets either way).
    fn amo_run_entries;
    /// Test switch: at-most-once MESSAGES frames are recorded one `Amo` entry per message.
    static AMO_ENTRY_PER_MESSAGE;
}

/// Which queue the next message fragment comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Retransmit,
    NewReliable,
    NewAmo,
}

impl Connection {
    /// Writes the next datagram to send into `buf` and returns its length, or `None` when
    /// there is nothing to send now. Call repeatedly until `None`. `buf` must hold at least
    /// [`Config::max_datagram_size`](crate::Config::max_datagram_size) bytes.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.drain_tokens(now);
        let mds = self.config.max_datagram_size;
        if buf.len() < mds {
            return None;
        }
        let sends_data = matches!(self.state, State::Established | State::Shutdown);
        let (frames_due, data) = self.transmit_due();
        if !(frames_due || data) {
            return None;
        }

        self.maybe_skip_pn(now);
        let pn = self.ledger.next_pn();
        if pn >= crate::seq::MAX_SEQ {
            // Packet numbers are never reused: a connection that used them all ends.
            self.close_reason
                .get_or_insert(crate::event::CloseReason::Local);
            self.enter_closed(now);
            return None;
        }
        let tag_len = self.integrity().tag_len();
        let mut w = Writer::new(&mut buf[..mds - tag_len]);
        let header = Header {
            packet_type: PacketType::Data,
            conn_id: self.remote_cid,
            packet_number: PacketNumber(pn).truncate(),
        };
        header.emit(&mut w).ok()?;
        let mut carried_flags = 0u8;
        let mut eliciting = false;
        let mut floor_sent = 0;

        // Acknowledgements ride on every packet when something is unacknowledged.
        let mut ack_upto = 0;
        if self.rx.ack_pending {
            ack_upto = self.write_ack(now, &mut w);
        }
        if self.state != State::Draining
            && (self.rx.msg_ack_dirty || (self.state == State::Closing && self.close_pending))
            && self.write_msg_ack(&mut w)
        {
            carried_flags |= carried::MSG_ACK;
            eliciting = true;
        }
        if sends_data {
            if self.forward_dirty && self.write_forward(&mut w) {
                carried_flags |= carried::FORWARD;
                eliciting = true;
            }
            if self.rx.reject_dirty && self.write_reject(&mut w) {
                carried_flags |= carried::REJECT;
                eliciting = true;
            }
            if self.amo_floor_dirty && self.amo_base > self.amo_floor_acked {
                let f = Frame::AmoFloor {
                    floor: self.amo_base,
                };
                if f.emit(&mut w).is_ok() {
                    self.amo_floor_dirty = false;
                    floor_sent = self.amo_base;
                    carried_flags |= carried::AMO_FLOOR;
                    eliciting = true;
                }
            }
        }
        if self.state == State::Closing && self.close_pending {
            let (code, reason) = self.close_frame;
            let f = Frame::Close(CloseFrame {
                code,
                reason: reason.as_bytes(),
            });
            if f.emit(&mut w).is_ok() {
                self.close_pending = false;
                carried_flags |= carried::CLOSE;
                eliciting = true;
            }
        }
        if data {
            eliciting |= self.write_messages(pn, &mut w);
        }
        if sends_data
            && !eliciting
            && (self.ping_pending
                || self.probes_pending > 0
                || (ack_upto > 0 && self.ack_ranges_need_floor(now)))
            && Frame::Ping.emit(&mut w).is_ok()
        {
            carried_flags |= carried::PING;
            eliciting = true;
        }
        let len = w.position();
        if len <= wire::HEADER_LEN {
            return None;
        }
        let total = wire::seal(buf, len, self.integrity()).ok()?;
        if !self.rx.ack_pending && !self.rx.msg_ack_dirty {
            self.rx.ack_due = false;
        }
        if eliciting {
            if ack_upto > 0 {
                self.last_ack_elicited = Some(now);
            }
            self.ping_pending = false;
            self.probes_pending = self.probes_pending.saturating_sub(1);
            self.cc.on_packet_sent(now, total as u64);
        }
        self.ledger.finish_packet(
            now,
            total as u32,
            eliciting,
            carried_flags,
            floor_sent,
            ack_upto,
        );
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += total as u64;
        self.last_sent = now;
        self.arm_keepalive();
        if eliciting {
            self.set_loss_timer(now);
        }
        log::trace!(
            "conn {}: sent packet {pn} ({total} bytes{})",
            self.local_cid,
            if eliciting { ", ack-eliciting" } else { "" }
        );
        Some(total)
    }

    /// What [`poll_transmit`](Self::poll_transmit) would write now: whether acknowledgements
    /// or control frames are due, and whether message data may go.
    #[inline(always)]
    fn transmit_due(&mut self) -> (bool, bool) {
        let sends_data = matches!(self.state, State::Established | State::Shutdown);
        // Acknowledgements (ACK and MSG_ACK) go out when due: at once for gaps and every
        // second packet, otherwise after the ack delay.
        let ack_now = self.rx.ack_due && (self.rx.ack_pending || self.rx.msg_ack_dirty);
        let control = match self.state {
            State::Established | State::Shutdown => {
                self.forward_dirty
                    || self.rx.reject_dirty
                    || (self.amo_floor_dirty && self.amo_base > self.amo_floor_acked)
                    || self.ping_pending
                    || self.probes_pending > 0
            }
            State::Closing => self.close_pending,
            State::Draining | State::Closed => false,
        };
        let mds = self.config.max_datagram_size as u64;
        let cwnd_open =
            self.ledger.bytes_in_flight + mds <= self.cc.window() || self.probes_pending > 0;
        let data = sends_data && cwnd_open && self.has_data();
        (ack_now || control, data)
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has a packet to build now. `false`
    /// holds until the next datagram, timer or call of the application: the endpoint does not
    /// ask such a connection again before one of those. Released message tokens come from
    /// other threads at any time and are only collected by `poll_transmit`, so a connection
    /// with a token sink always answers `true`. A release alone does not wake an idle
    /// connection: it goes out with the flush after the next datagram, timer or call of the
    /// application.
    pub(crate) fn wants_transmit(&mut self) -> bool {
        if self.token_sink.is_some() {
            return true;
        }
        let (frames_due, data) = self.transmit_due();
        frames_due || data
    }

    /// Whether a message fragment is waiting to be sent and allowed by the windows.
    fn has_data(&mut self) -> bool {
        self.skip_stale_retx();
        !self.retx.is_empty() || self.next_reliable().is_some() || self.next_amo().is_some()
    }

    fn skip_stale_retx(&mut self) {
        while let Some(&(id, frag)) = self.retx.front() {
            let live = self
                .outbox_get(id)
                .and_then(|m| m.frags.get(frag as usize))
                .is_some_and(|f| f.state == FragState::Queued);
            if live {
                break;
            }
            self.retx.pop_front();
        }
    }

    /// The next never-sent reliable fragment within the peer's credit.
    fn next_reliable(&mut self) -> Option<(u64, u32)> {
        next_unsent(
            &mut self.cursor,
            self.out_base,
            |i| self.outbox.get(i),
            |m| m.count,
        )
        .filter(|&(id, _)| id < self.peer_limit)
    }

    /// The next never-sent at-most-once fragment within the dedup window.
    fn next_amo(&mut self) -> Option<(u64, u32)> {
        let end = self.amo_base + self.config.amo_window;
        next_unsent(
            &mut self.amo_cursor,
            self.amo_base,
            |i| self.amo_out.get(i),
            |m| m.count,
        )
        .filter(|&(id, _)| id < end)
    }

    /// Whether an ACK-only packet should carry a PING so that the peer acknowledges it: the
    /// ACK reports a gap, and no packet carrying an ACK has asked for an acknowledgement for a
    /// round trip. A receiver that only acknowledges (at-most-once traffic one way) never
    /// hears that its ACKs arrived, so after losses every ACK would report every gap up to
    /// `max_ack_ranges`, and the peer would parse them all again each time. One PING per round
    /// trip lets the report floor rise (RFC 9000 section 13.2.4).
    fn ack_ranges_need_floor(&self, now: Instant) -> bool {
        let floor = self.rx.ack_floor;
        let gaps = self
            .rx
            .received
            .iter()
            .rev()
            .nth(1)
            .is_some_and(|r| r.end > floor);
        gaps && self
            .last_ack_elicited
            .is_none_or(|t| now.saturating_duration_since(t) >= self.rtt.smoothed())
    }

    fn write_ack(&mut self, now: Instant, w: &mut Writer<'_>) -> u64 {
        let delay_us = self.rx.largest.map_or(0, |(_, t)| {
            now.saturating_duration_since(t).as_micros() as u64
        });
        let floor = self.rx.ack_floor;
        // Once a packet carrying this ACK is acknowledged, packets below `upto` are no longer
        // reported, even those in lower ranges that did not fit (RFC 9000 section 13.2.4: stop
        // at the Largest Acknowledged of an acknowledged ACK). The sender has declared such
        // packets lost long before, and their messages are retransmitted until MSG_ACKed.
        let upto = self.rx.received.max().map_or(0, |m| m + 1);
        let mut n = self.config.max_ack_ranges;
        while n > 0 {
            let ranges = self
                .rx
                .received
                .iter()
                .rev()
                .take_while(move |r| r.end > floor)
                .map(move |r| r.start.max(floor)..r.end)
                .take(n);
            // Written whole or not at all; a frame too long for the room left is tried again
            // with half the ranges.
            match wire::emit_ack(w, delay_us, ranges) {
                Ok(()) => {
                    self.rx.ack_pending = false;
                    self.rx.eliciting_since_ack = 0;
                    self.timers.stop(crate::timer::Timer::Ack);
                    return upto;
                }
                Err(WireError::BufferTooSmall) => n /= 2,
                Err(_) => return 0,
            }
        }
        0
    }

    fn write_msg_ack(&mut self, w: &mut Writer<'_>) -> bool {
        let cum = self.rx.done.base();
        let limit = self.rx.limit;
        let mut n = self.config.max_msg_ack_ranges;
        loop {
            let ranges = self.rx.done.set_ranges().take(n);
            // Written whole or not at all, as the ACK frame.
            match wire::emit_msg_ack(w, cum, limit, ranges) {
                Ok(()) => {
                    self.rx.msg_ack_dirty = false;
                    return true;
                }
                Err(WireError::BufferTooSmall) if n > 0 => n /= 2,
                Err(_) => return false,
            }
        }
    }

    /// Writes FORWARD entries, continuing a round through the list where the previous packet
    /// stopped, so that a list longer than one packet is sent in full.
    fn write_forward(&mut self, w: &mut Writer<'_>) -> bool {
        let limit = self.peer_limit;
        let mut sendable: Vec<ForwardEntry> = std::mem::take(&mut self.forward_scratch);
        sendable.clear();
        let from = self.forward_cursor.min(self.forward.len());
        sendable.extend(
            self.forward[from..]
                .iter()
                .filter(|e| e.id < limit)
                .copied(),
        );
        let all = sendable.len();
        while !sendable.is_empty() && wire::forward_frame_len(&sendable) > w.remaining() {
            sendable.truncate(sendable.len() / 2);
        }
        let ok = !sendable.is_empty() && wire::emit_forward(w, &sendable).is_ok();
        if ok && sendable.len() < all {
            // Resume after the last entry written.
            let last = sendable[sendable.len() - 1].id;
            self.forward_cursor = self.forward[from..]
                .iter()
                .position(|e| e.id == last)
                .map_or(self.forward.len(), |i| from + i + 1);
        } else if ok || all == 0 {
            // The round is complete; entries beyond the peer's credit wait for more credit
            // (which starts a new round).
            self.forward_dirty = false;
            self.forward_cursor = 0;
        }
        self.forward_scratch = sendable;
        ok
    }

    /// Writes REJECT ids, continuing a round through the list where the previous packet
    /// stopped.
    fn write_reject(&mut self, w: &mut Writer<'_>) -> bool {
        let from = self.rx.reject_cursor.min(self.rx.rejects.len());
        let rest = &self.rx.rejects[from..];
        if rest.is_empty() {
            self.rx.reject_dirty = false;
            self.rx.reject_cursor = 0;
            return false;
        }
        let mut n = rest.len();
        while n > 0 && wire::reject_frame_len(&rest[..n]) > w.remaining() {
            n /= 2;
        }
        if n == 0 || wire::emit_reject(w, &rest[..n]).is_err() {
            return false;
        }
        if n == rest.len() {
            self.rx.reject_dirty = false;
            self.rx.reject_cursor = 0;
        } else {
            self.rx.reject_cursor = from + n;
        }
        true
    }

    /// Fills the rest of the packet with message fragments. Returns whether any was written.
    fn write_messages(&mut self, pn: u64, w: &mut Writer<'_>) -> bool {
        let mut wrote = false;
        loop {
            self.skip_stale_retx();
            let source = if !self.retx.is_empty() {
                Source::Retransmit
            } else {
                match (self.next_reliable(), self.next_amo()) {
                    (None, None) => break,
                    (Some(_), None) => {
                        // Nothing else waits, and writing new reliable fragments queues
                        // nothing: they fill the rest of the packet in one pass.
                        wrote |= self.write_new_reliable(pn, w, None);
                        break;
                    }
                    (None, Some(_)) if one_pass() => {
                        // Only at-most-once messages wait: they fill the rest of the packet
                        // in one pass.
                        wrote |= self.write_new_amo(w, None);
                        break;
                    }
                    (None, Some(_)) => Source::NewAmo,
                    (Some((rid, _)), Some((aid, _))) => {
                        let rq = self.outbox_get(rid).map(|m| m.queued_at);
                        let aq = self.amo_peek(aid).map(|m| m.queued_at);
                        match aq {
                            Some(aq) if rq.is_some_and(|rq| aq < rq) => {
                                if !one_pass() {
                                    Source::NewAmo
                                } else {
                                    // The at-most-once messages queued before the next
                                    // reliable one go first, in one pass; then the loop looks
                                    // again.
                                    if !self.write_new_amo(w, rq) {
                                        break;
                                    }
                                    wrote = true;
                                    continue;
                                }
                            }
                            Some(aq) if one_pass() => {
                                // The reliable messages queued no later than the next
                                // at-most-once one go first, in one pass; then the loop
                                // looks again (the pass writes nothing if the packet is
                                // full).
                                if !self.write_new_reliable(pn, w, Some(aq)) {
                                    break;
                                }
                                wrote = true;
                                continue;
                            }
                            _ => Source::NewReliable,
                        }
                    }
                }
            };
            let written = match source {
                Source::Retransmit if one_pass() => self.write_retransmits(pn, w),
                Source::Retransmit => {
                    let (id, frag) = self.retx[0];
                    let ok = self.write_reliable_fragment(pn, id, frag, w);
                    if ok {
                        self.retx.pop_front();
                    }
                    ok
                }
                Source::NewReliable => {
                    let (id, frag) = self.cursor;
                    let ok = self.write_reliable_fragment(pn, id, frag, w);
                    if ok {
                        self.cursor = (id, frag + 1);
                    }
                    ok
                }
                Source::NewAmo => {
                    let (id, frag) = self.amo_cursor;
                    let ok = self.write_amo_fragment(id, frag, w);
                    if ok {
                        self.amo_cursor = (id, frag + 1);
                    }
                    ok
                }
            };
            if !written {
                break;
            }
            wrote = true;
        }
        wrote
    }

    /// Writes never-sent reliable fragments in order from the send cursor until the packet is
    /// full, the outbox ends or the peer's credit does, moving the cursor as
    /// [`next_reliable`](Self::next_reliable) and
    /// [`write_reliable_fragment`](Self::write_reliable_fragment) would one fragment at a time.
    /// Returns whether any was written. Kept out of `poll_transmit`, whose register pressure
    /// would otherwise spill this loop's state.
    /// With `queued_by`, stops at the first message queued after it (an at-most-once message
    /// queued earlier goes first).
    #[inline(never)]
    fn write_new_reliable<'a>(
        &mut self,
        pn: u64,
        w: &mut Writer<'a>,
        queued_by: Option<Instant>,
    ) -> bool {
        let (mut id, mut frag) = self.cursor;
        if id < self.out_base {
            (id, frag) = (self.out_base, 0);
        }
        let start = (id - self.out_base) as usize;
        if start > self.outbox.len() {
            return false;
        }
        let mut wrote = false;
        // The MESSAGES frame being filled; recorded in the ledger when it ends.
        let mut batch: Option<Batch<'a>> = None;
        let mut slots = self.outbox.range_mut(start).peekable();
        'slots: while let Some(slot) = slots.next() {
            let Some(msg) = slot else {
                // A message with an outcome leaves a gap in the ids (the cursor may have
                // stood part-way through it).
                end_batch::<true>(&mut batch, &mut self.ledger);
                id += 1;
                frag = 0;
                continue;
            };
            if queued_by.is_some_and(|t| msg.queued_at > t) {
                break;
            }
            if frag == 0 && msg.count <= 1 {
                // A whole message: into the open MESSAGES frame if it belongs there, or a new
                // one if the next message would join it too, else a MESSAGE frame.
                if id >= self.peer_limit {
                    break;
                }
                if let Some(b) = &mut batch
                    && b.takes(msg)
                {
                    if b.writer.push(w, &msg.payload).is_err() {
                        break;
                    }
                    b.next_seq = b.next_seq.map(|s| s + 1);
                    set_in_flight(msg, pn, 0);
                    wrote = true;
                    id += 1;
                    continue;
                }
                end_batch::<true>(&mut batch, &mut self.ledger);
                let pairs = id + 1 < self.peer_limit
                    && matches!(slots.peek(), Some(Some(next)) if pairs_with(msg, next)
                        && queued_by.is_none_or(|t| next.queued_at <= t));
                let (g, ch, seq) = (msg.guarantee, msg.channel, msg.chan_seq);
                if pairs {
                    batch = Batch::begin(w, msg, id);
                }
                if batch.is_some() {
                    set_in_flight(msg, pn, 0);
                } else {
                    // Alone, or with no room for the MESSAGES frame's count byte: a MESSAGE
                    // frame.
                    if wire::emit_whole_message(g, ch, id, seq, &msg.payload, w).is_err() {
                        break;
                    }
                    mark_in_flight(msg, &mut self.ledger, pn, id, 0);
                }
                wrote = true;
                id += 1;
                continue;
            }
            end_batch::<true>(&mut batch, &mut self.ledger);
            while frag < msg.count {
                if id >= self.peer_limit
                    || !write_out_fragment(msg, &mut self.ledger, pn, id, frag, w)
                {
                    break 'slots;
                }
                wrote = true;
                frag += 1;
            }
            id += 1;
            frag = 0;
        }
        end_batch::<true>(&mut batch, &mut self.ledger);
        self.cursor = (id, frag);
        wrote
    }

    /// Writes the fragments queued for retransmission, front first, until the packet is full
    /// or the queue is empty: what [`write_reliable_fragment`](Self::write_reliable_fragment)
    /// would write one entry at a time, except that whole messages with consecutive ids that
    /// may share a MESSAGES frame share one. A lost packet's messages are queued again in id
    /// order, so its runs go out as runs again. Entries that no longer need sending (the
    /// message has an outcome, or the fragment was acknowledged or queued again since) are
    /// dropped on the way. Returns whether any was written.
    #[inline(never)]
    fn write_retransmits<'a>(&mut self, pn: u64, w: &mut Writer<'a>) -> bool {
        let mut wrote = false;
        let mut batch: Option<Batch<'a>> = None;
        while let Some(&(id, frag)) = self.retx.front() {
            let Some(idx) = id.checked_sub(self.out_base).map(|i| i as usize) else {
                self.retx.pop_front();
                continue;
            };
            let queued = |m: &OutMsg, frag: u32| {
                m.frags
                    .get(frag as usize)
                    .is_some_and(|f| f.state == FragState::Queued)
            };
            let Some(Some(msg)) = self.outbox.get(idx) else {
                self.retx.pop_front();
                continue;
            };
            if !queued(msg, frag) {
                self.retx.pop_front();
                continue;
            }
            if frag == 0 && msg.count <= 1 {
                let joins = batch
                    .as_ref()
                    .is_some_and(|b| b.first_id + b.writer.len() as u64 == id && b.takes(msg));
                if !joins {
                    end_batch::<true>(&mut batch, &mut self.ledger);
                    // A run starts only if the next entry would join it.
                    let pairs = matches!(self.retx.get(1), Some(&(next, 0)) if next == id + 1)
                        && matches!(self.outbox.get(idx + 1), Some(Some(n))
                            if pairs_with(msg, n) && queued(n, 0));
                    if pairs {
                        batch = Batch::begin(w, msg, id);
                    }
                    if batch.is_none() {
                        // Alone, or no room for the frame's count byte: a MESSAGE frame.
                        if !self.write_reliable_fragment(pn, id, 0, w) {
                            break;
                        }
                        self.retx.pop_front();
                        wrote = true;
                        continue;
                    }
                } else if let Some(b) = &mut batch {
                    if b.writer.push(w, &msg.payload).is_err() {
                        break;
                    }
                    b.next_seq = b.next_seq.map(|s| s + 1);
                }
                if let Some(Some(msg)) = self.outbox.get_mut(idx) {
                    set_in_flight(msg, pn, 0);
                }
                self.retx.pop_front();
                wrote = true;
                continue;
            }
            end_batch::<true>(&mut batch, &mut self.ledger);
            if !self.write_reliable_fragment(pn, id, frag, w) {
                break;
            }
            self.retx.pop_front();
            wrote = true;
        }
        end_batch::<true>(&mut batch, &mut self.ledger);
        wrote
    }

    fn write_reliable_fragment(&mut self, pn: u64, id: u64, frag: u32, w: &mut Writer<'_>) -> bool {
        let Some(idx) = id.checked_sub(self.out_base).map(|i| i as usize) else {
            return false;
        };
        let Some(Some(msg)) = self.outbox.get_mut(idx) else {
            return false;
        };
        write_out_fragment(msg, &mut self.ledger, pn, id, frag, w)
    }

    /// Writes new at-most-once fragments from the cursor on, whole messages of one channel
    /// with consecutive ids in MESSAGES frames, until the packet is full, the queue ends or
    /// the at-most-once window does: what [`write_amo_fragment`](Self::write_amo_fragment)
    /// would write one fragment at a time, from a cursor that
    /// [`next_amo`](Self::next_amo) placed. Returns whether any was written.
    /// With `queued_before`, stops at the first message not queued before it (the next
    /// reliable message, which goes first on a tie).
    #[inline(never)]
    fn write_new_amo<'a>(&mut self, w: &mut Writer<'a>, queued_before: Option<Instant>) -> bool {
        let (mut id, mut frag) = self.amo_cursor;
        let Some(start) = id.checked_sub(self.amo_base).map(|i| i as usize) else {
            return false;
        };
        let end = self.amo_base + self.config.amo_window;
        let amo = Guarantee::AtMostOnce;
        let mut wrote = false;
        // The MESSAGES frame being filled; its ledger entry is written when it ends.
        let mut batch: Option<Batch<'a>> = None;
        let mut slots = self.amo_out.range_mut(start).peekable();
        'slots: while let Some(slot) = slots.next() {
            let Some(msg) = slot else {
                end_batch::<false>(&mut batch, &mut self.ledger);
                id += 1;
                frag = 0;
                continue;
            };
            if id >= end || queued_before.is_some_and(|t| msg.queued_at >= t) {
                break;
            }
            if frag == 0 && msg.count <= 1 {
                if let Some(b) = &mut batch
                    && !b.writer.is_full()
                    && b.writer.channel() == msg.channel
                {
                    if b.writer.push(w, &msg.payload).is_err() {
                        break;
                    }
                } else {
                    end_batch::<false>(&mut batch, &mut self.ledger);
                    let pairs = id + 1 < end
                        && matches!(slots.peek(), Some(Some(next))
                            if next.count <= 1 && next.channel == msg.channel
                                && queued_before.is_none_or(|t| next.queued_at < t));
                    let ch = msg.channel;
                    batch = if pairs {
                        MessagesWriter::begin(w, amo, ch, id, None, &msg.payload)
                            .ok()
                            .map(|writer| Batch {
                                writer,
                                first_id: id,
                                next_seq: None,
                            })
                    } else {
                        None
                    };
                    if batch.is_none() {
                        if wire::emit_whole_message(amo, ch, id, None, &msg.payload, w).is_err() {
                            break;
                        }
                        self.ledger.push_frame(SentFrame::Amo { id, frag: 0 });
                    }
                }
                msg.sent += 1;
                wrote = true;
                id += 1;
                continue;
            }
            end_batch::<false>(&mut batch, &mut self.ledger);
            while frag < msg.count {
                if !write_out_amo_fragment(msg, &mut self.ledger, id, frag, w) {
                    break 'slots;
                }
                wrote = true;
                frag += 1;
            }
            id += 1;
            frag = 0;
        }
        end_batch::<false>(&mut batch, &mut self.ledger);
        self.amo_cursor = (id, frag);
        wrote
    }

    fn write_amo_fragment(&mut self, id: u64, frag: u32, w: &mut Writer<'_>) -> bool {
        let Some(idx) = id.checked_sub(self.amo_base).map(|i| i as usize) else {
            return false;
        };
        let Some(Some(msg)) = self.amo_out.get_mut(idx) else {
            return false;
        };
        write_out_amo_fragment(msg, &mut self.ledger, id, frag, w)
    }

    fn amo_peek(&self, id: u64) -> Option<&super::send::AmoOut> {
        let idx = id.checked_sub(self.amo_base)? as usize;
        self.amo_out.get(idx)?.as_ref()
    }
}

/// Moves a send cursor (id, fragment) to the next never-sent fragment in a queue of messages
/// that starts at id `base`, skipping messages that already have an outcome (`None`).
/// Returns it, or `None` (cursor at the end) when every fragment was sent.
fn next_unsent<'q, T: 'q>(
    cursor: &mut (u64, u32),
    base: u64,
    queue: impl Fn(usize) -> Option<&'q Option<T>>,
    count: impl Fn(&T) -> u32,
) -> Option<(u64, u32)> {
    let (mut id, mut frag) = *cursor;
    if id < base {
        (id, frag) = (base, 0);
    }
    loop {
        match queue((id - base) as usize) {
            None => {
                *cursor = (id, 0);
                return None;
            }
            Some(Some(m)) if frag < count(m) => {
                *cursor = (id, frag);
                return Some((id, frag));
            }
            Some(_) => {
                id += 1;
                frag = 0;
            }
        }
    }
}

/// Writes fragment `frag` of at-most-once message `id` (`msg`) in a MESSAGE frame and records
/// it in the packet's ledger entry; `false` (nothing written) when it does not fit.
fn write_out_amo_fragment(
    msg: &mut super::send::AmoOut,
    ledger: &mut Ledger,
    id: u64,
    frag: u32,
    w: &mut Writer<'_>,
) -> bool {
    let amo = Guarantee::AtMostOnce;
    let frame = message_frame(amo, msg.channel, id, None, msg.count, frag, &msg.payload);
    if frame.is_none_or(|f| f.emit(w).is_err()) {
        return false;
    }
    msg.sent += 1;
    ledger.push_frame(SentFrame::Amo { id, frag });
    true
}

/// Writes fragment `frag` of reliable message `id` and records it in flight in packet `pn`.
/// A frame that does not fit is refused whole: nothing written, nothing recorded.
#[inline(always)]
fn write_out_fragment(
    msg: &mut OutMsg,
    ledger: &mut Ledger,
    pn: u64,
    id: u64,
    frag: u32,
    w: &mut Writer<'_>,
) -> bool {
    let written = if msg.count <= 1 {
        // The common shape, a whole message, written from the fields (as `MessageFrame::emit`
        // would).
        let (g, ch, seq) = (msg.guarantee, msg.channel, msg.chan_seq);
        wire::emit_whole_message(g, ch, id, seq, &msg.payload, w).is_ok()
    } else {
        message_frame(
            msg.guarantee,
            msg.channel,
            id,
            msg.chan_seq,
            msg.count,
            frag,
            &msg.payload,
        )
        .is_some_and(|f| f.emit(w).is_ok())
    };
    if written {
        mark_in_flight(msg, ledger, pn, id, frag);
    }
    written
}

/// Records fragment `frag` of reliable message `id` as written into packet `pn`.
#[inline(always)]
fn mark_in_flight(msg: &mut OutMsg, ledger: &mut Ledger, pn: u64, id: u64, frag: u32) {
    set_in_flight(msg, pn, frag);
    ledger.push_frame(SentFrame::Reliable { id, frag });
}

/// Marks fragment `frag` of `msg` in flight in packet `pn`.
#[inline(always)]
fn set_in_flight(msg: &mut OutMsg, pn: u64, frag: u32) {
    match &mut msg.frags {
        Frags::One([f]) => f.state = FragState::InFlight(pn),
        Frags::Many(v) => v[frag as usize].state = FragState::InFlight(pn),
    }
}

/// Whether whole message `next` may follow whole message `msg` in a MESSAGES frame (the
/// frame's ids are consecutive; so must its channel sequence numbers be, if ordered).
#[inline(always)]
fn pairs_with(msg: &OutMsg, next: &OutMsg) -> bool {
    next.count <= 1
        && next.guarantee == msg.guarantee
        && next.channel == msg.channel
        && next.chan_seq == msg.chan_seq.map(|s| s + 1)
}

/// A MESSAGES frame being written, and the id of its first message.
struct Batch<'a> {
    writer: MessagesWriter<'a>,
    first_id: u64,
    /// The channel sequence number the next message must have, if ordered.
    next_seq: Option<u64>,
}

impl<'a> Batch<'a> {
    /// Starts a MESSAGES frame with whole message `msg`, id `id`; `None` when the frame does
    /// not fit.
    #[inline(always)]
    fn begin(w: &mut Writer<'a>, msg: &OutMsg, id: u64) -> Option<Self> {
        let seq = msg.chan_seq;
        MessagesWriter::begin(w, msg.guarantee, msg.channel, id, seq, &msg.payload)
            .ok()
            .map(|writer| Batch {
                writer,
                first_id: id,
                next_seq: seq.map(|s| s + 1),
            })
    }

    /// Whether whole reliable message `msg` (with the next id) may join the frame.
    #[inline(always)]
    fn takes(&self, msg: &OutMsg) -> bool {
        !self.writer.is_full()
            && msg.guarantee == self.writer.guarantee()
            && msg.channel == self.writer.channel()
            && msg.chan_seq == self.next_seq
    }
}

/// Records the messages of the MESSAGES frame being written, if any, in the packet's ledger
/// entry (one entry for the run, one for a message alone), and ends it. `RELIABLE`: the
/// frame's id space, known where it is written (a run-time test here costs the reliable
/// writer's loop about 9 instructions per message).
#[inline(always)]
fn end_batch<const RELIABLE: bool>(batch: &mut Option<Batch<'_>>, ledger: &mut Ledger) {
    let Some(b) = batch.take() else {
        return;
    };
    debug_assert_eq!(b.writer.guarantee().is_reliable(), RELIABLE);
    let (id, count) = (b.first_id, b.writer.len() as u32);
    if RELIABLE {
        ledger.push_frame(if count == 1 {
            SentFrame::Reliable { id, frag: 0 }
        } else {
            SentFrame::ReliableRun { id, count }
        });
    } else if count == 1 || !amo_run_entries() {
        for id in id..id + u64::from(count) {
            ledger.push_frame(SentFrame::Amo { id, frag: 0 });
        }
    } else {
        ledger.push_frame(SentFrame::AmoRun { id, count });
    }
}

/// The MESSAGE frame for fragment `frag` of a message cut into `count` fragments.
#[inline]
fn message_frame<'a>(
    guarantee: Guarantee,
    channel: u8,
    id: u64,
    chan_seq: Option<u64>,
    count: u32,
    frag: u32,
    payload: &'a [u8],
) -> Option<MessageFrame<'a>> {
    if count <= 1 {
        return Some(MessageFrame {
            guarantee,
            channel,
            id,
            chan_seq,
            fragment: None,
            payload,
        });
    }
    let total_len = payload.len() as u64;
    let r = Fragment::byte_range(total_len, u64::from(count), u64::from(frag))?;
    Some(MessageFrame {
        guarantee,
        channel,
        id,
        chan_seq,
        fragment: Some(Fragment {
            total_len,
            count: u64::from(count),
            index: u64::from(frag),
        }),
        payload: &payload[r.start as usize..r.end as usize],
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::super::Connection;
    use super::super::ledger::SentFrame;
    use super::FragState;
    use crate::Config;
    use crate::event::UndeliverableReason;
    use crate::message::{Guarantee, SendOptions};
    use crate::wire::Writer;
    use crate::wire::{self, Frame};

    /// A message to send: its size, whether it is ordered, exactly-once or at-least-once.
    type Spec = (usize, bool, bool);

    fn sender(now: Instant, specs: &[Spec], abandon: &[usize], credit: u64) -> Connection {
        let mut c = Connection::new(Arc::new(Config::default()), 1, 2, now).unwrap();
        for &(size, ordered, exactly) in specs {
            let g = if exactly {
                Guarantee::ExactlyOnce
            } else {
                Guarantee::AtLeastOnce
            };
            let mut opts = SendOptions::new(g).channel(size as u8 % 3);
            opts.ordered = ordered;
            c.send_message(now, &vec![size as u8; size], opts).unwrap();
        }
        let base = c.out_base;
        for &i in abandon {
            c.abandon_reliable(
                base + (i % specs.len().max(1)) as u64,
                UndeliverableReason::Lost,
            );
        }
        c.peer_limit = base + credit;
        c
    }

    /// The messages (or fragments) in a run of frames, MESSAGES frames taken apart.
    fn messages_in(bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for f in wire::frames(bytes) {
            match f.unwrap() {
                Frame::Message(m) => out.push(format!("{m:?}")),
                Frame::Messages(b) => out.extend(b.messages().map(|m| format!("{m:?}"))),
                other => panic!("not a message: {other:?}"),
            }
        }
        out
    }

    /// A connection with the default configuration, and the instant it was made at.
    fn default_connection() -> (Connection, Instant) {
        #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
        let t0 = Instant::now();
        (
            Connection::new(Arc::new(Config::default()), 1, 2, t0).unwrap(),
            t0,
        )
    }

    /// Every fragment of every reliable message of `c` is in flight.
    fn assert_all_in_flight(c: &Connection) {
        let states = sent_state(c);
        assert!(
            states
                .iter()
                .flatten()
                .flatten()
                .all(|f| matches!(f, FragState::InFlight(_))),
            "{states:?}"
        );
    }

    /// What the outbox says about each reliable message's fragments.
    fn sent_state(c: &Connection) -> Vec<Option<Vec<FragState>>> {
        c.outbox
            .iter()
            .map(|m| {
                m.as_ref()
                    .map(|m| m.frags.iter().map(|f| f.state).collect())
            })
            .collect()
    }

    /// Whole messages with consecutive ids share a MESSAGES frame; a message with an outcome
    /// (a gap in the ids), another guarantee or channel, a break in an ordered channel's
    /// sequence, or a fragmented message ends it. A message with no partner goes alone in a
    /// MESSAGE frame.
    #[test]
    fn messages_frames_hold_runs_of_consecutive_ids_only() {
        #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
        let now = Instant::now();
        let eo = (10, false, true);
        let specs = [
            eo,
            eo,
            eo,
            eo,                 // 0-3: 2 abandoned
            (10, false, false), // 4: at-least-once
            eo,                 // 5
            (10, true, true),
            (10, true, true),    // 6-7: ordered on channel 1
            (2000, false, true), // 8: fragmented
            eo,
            eo, // 9-10
            (11, false, true),
            (11, false, true), // 11-12: channel 2
        ];
        let mut c = sender(now, &specs, &[2], 1_000);
        // `sender` picks channel size % 3: 1 for the 10-byte messages, 2 for the 11-byte ones.
        let pn = c.ledger.next_pn();
        let mut buf = vec![0u8; 4000];
        let mut w = Writer::new(&mut buf);
        assert!(c.write_new_reliable(pn, &mut w, None));
        let n = w.position();
        let runs = id_runs(&buf[..n]);
        // Nothing but message frames.
        assert_eq!(wire::frames(&buf[..n]).count(), runs.len());
        assert_eq!(
            runs,
            [
                vec![0, 1],
                vec![3],
                vec![4],
                vec![5],
                vec![6, 7],
                vec![8],
                vec![8],
                vec![9, 10],
                vec![11, 12]
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// With at-most-once and reliable messages queued together, the packets carry the same
        /// messages in the same order whether new reliable ones go out in one pass (MESSAGES
        /// frames) or one frame at a time, and take no more packets.
        #[test]
        fn one_pass_with_at_most_once_waiting_keeps_the_order(
            sends in proptest::collection::vec(
                (0..3u8, prop_oneof![1..80usize, 1..3000usize], any::<bool>(), 0..3u8),
                1..60,
            ),
            room in 400..1500usize,
        ) {
            #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
            let t0 = Instant::now();
            // No congestion window, so that every message goes out in this one flush.
            let config = Arc::new(
                Config::default()
                    .max_datagram_size(room)
                    .max_message_size(4096)
                    .congestion(crate::CongestionControl::None),
            );
            let mut out = Vec::new();
            for one_at_a_time in [false, true] {
                let mut c = Connection::new(config.clone(), 1, 2, t0).unwrap();
                let mut now = t0;
                for &(g, size, ordered, gap) in &sends {
                    // Several messages share a send time; the others come later.
                    now += Duration::from_micros(u64::from(gap / 2));
                    let g = [Guarantee::AtMostOnce, Guarantee::AtLeastOnce, Guarantee::ExactlyOnce]
                        [usize::from(g)];
                    let opts = SendOptions::new(g)
                        .channel((size % 2) as u8)
                        .ordered(ordered && g.is_reliable());
                    c.send_message(now, &vec![size as u8; size], opts).unwrap();
                }
                let _switch = OneFrameAtATime::set(one_at_a_time);
                let mut buf = vec![0u8; 2048];
                let (mut messages, mut packets) = (Vec::new(), 0);
                while let Some(n) = c.poll_transmit(now, &mut buf) {
                    packets += 1;
                    let (_, payload) = wire::open(&buf[..n], &wire::Crc32).unwrap();
                    for f in wire::frames(payload) {
                        match f.unwrap() {
                            Frame::Message(m) => messages.push(brief(&m)),
                            Frame::Messages(b) => messages.extend(b.messages().map(|m| brief(&m))),
                            _ => {}
                        }
                    }
                    prop_assert!(packets < 10_000);
                }
                out.push((messages, packets));
            }
            prop_assert_eq!(&out[0].0, &out[1].0);
            prop_assert!(out[0].1 <= out[1].1, "{} > {} packets", out[0].1, out[1].1);
        }
    }

    /// With at-most-once messages waiting, the reliable ones queued no later than the next
    /// of them still share MESSAGES frames, in send-time order.
    #[test]
    fn reliable_runs_interleave_with_at_most_once_messages_by_send_time() {
        #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        let mut c = Connection::new(Arc::new(Config::default()), 1, 2, t0).unwrap();
        let (amo, eo) = (Guarantee::AtMostOnce, Guarantee::ExactlyOnce);
        for (t, g) in [
            (t0, amo),
            (t0, eo),
            (t0, eo),
            (t0, eo),
            (t1, amo),
            (t1, eo),
            (t1, eo),
        ] {
            c.send_message(t, &[7; 20], SendOptions::new(g)).unwrap();
        }
        let mut buf = vec![0u8; 1500];
        let n = c.poll_transmit(t1, &mut buf).unwrap();
        let (_, payload) = wire::open(&buf[..n], &wire::Crc32).unwrap();
        let frames: Vec<(char, Vec<u64>)> = wire::frames(payload)
            .filter_map(|f| match f.unwrap() {
                Frame::Message(m) => Some((if m.guarantee == amo { 'a' } else { 'r' }, vec![m.id])),
                Frame::Messages(b) => Some(('R', b.messages().map(|m| m.id).collect())),
                _ => None,
            })
            .collect();
        assert_eq!(
            frames,
            [
                ('R', vec![0, 1, 2]),
                ('a', vec![0]),
                ('R', vec![3, 4]),
                ('a', vec![1])
            ]
        );
    }

    /// With only at-most-once messages waiting, whole ones of one channel with consecutive
    /// ids share MESSAGES frames; a channel change, a fragmented message or a message with an
    /// outcome (a gap) ends a run.
    #[test]
    fn at_most_once_runs_share_messages_frames() {
        let (mut c, t0) = default_connection();
        for (ch, size) in [
            (0u8, 20),
            (0, 20),
            (0, 20),
            (1, 20),
            (1, 20),
            (1, 2000),
            (1, 20),
        ] {
            let opts = SendOptions::new(Guarantee::AtMostOnce).channel(ch);
            c.send_message(t0, &vec![7; size], opts).unwrap();
        }
        let runs = flushed_id_runs(&mut c, t0);
        assert_eq!(
            runs,
            [vec![0, 1, 2], vec![3, 4], vec![5], vec![5], vec![6]],
            "runs of ids per frame"
        );
    }

    /// The ids of each message frame in `frames` (a frame payload): one per MESSAGE frame,
    /// the run of a MESSAGES frame; other frames are left out.
    fn id_runs(frames: &[u8]) -> Vec<Vec<u64>> {
        wire::frames(frames)
            .filter_map(|f| match f.unwrap() {
                Frame::Message(m) => Some(vec![m.id]),
                Frame::Messages(b) => Some(b.messages().map(|m| m.id).collect()),
                _ => None,
            })
            .collect()
    }

    /// [`id_runs`] of every packet `c` sends at `now` until it has nothing more.
    fn flushed_id_runs(c: &mut Connection, now: Instant) -> Vec<Vec<u64>> {
        let mut buf = vec![0u8; 4000];
        let mut runs = Vec::new();
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            let (_, payload) = wire::open(&buf[..n], &wire::Crc32).unwrap();
            runs.extend(id_runs(payload));
        }
        runs
    }

    /// Sets the one-frame-at-a-time switch while it lives (off again even if a test fails).
    struct OneFrameAtATime;

    impl OneFrameAtATime {
        fn set(on: bool) -> Self {
            super::ONE_FRAME_AT_A_TIME.with(|f| f.set(on));
            OneFrameAtATime
        }
    }

    impl Drop for OneFrameAtATime {
        fn drop(&mut self) {
            super::ONE_FRAME_AT_A_TIME.with(|f| f.set(false));
        }
    }

    /// A message frame in brief: guarantee, channel, id, channel sequence number, fragment
    /// index, payload length.
    type Brief = (u8, u8, u64, Option<u64>, u64, usize);

    /// The [`Brief`] of `m`.
    fn brief(m: &wire::MessageFrame<'_>) -> Brief {
        let g = m.guarantee.to_bits();
        let index = m.fragment.map_or(0, |f| f.index);
        (g, m.channel, m.id, m.chan_seq, index, m.payload.len())
    }

    /// At-most-once and reliable messages queued in turns go out in the order they were
    /// queued, each turn's run in one MESSAGES frame.
    #[test]
    fn mixed_guarantees_go_out_in_queue_order_in_runs() {
        let (mut c, t0) = default_connection();
        let mut now = t0;
        let turns = [
            Guarantee::AtMostOnce,
            Guarantee::ExactlyOnce,
            Guarantee::AtMostOnce,
            Guarantee::AtLeastOnce,
        ];
        for g in turns {
            for _ in 0..3 {
                c.send_message(now, &[7; 10], SendOptions::new(g)).unwrap();
                now += Duration::from_micros(1);
            }
        }
        let mut buf = vec![0u8; 4000];
        let n = c.poll_transmit(now, &mut buf).unwrap();
        let (_, payload) = wire::open(&buf[..n], &wire::Crc32).unwrap();
        let frames: Vec<(Guarantee, Vec<u64>)> = wire::frames(payload)
            .filter_map(|f| match f.unwrap() {
                Frame::Messages(b) => {
                    let ids = b.messages().map(|m| m.id).collect();
                    Some((b.messages().next().unwrap().guarantee, ids))
                }
                Frame::Message(m) => Some((m.guarantee, vec![m.id])),
                _ => None,
            })
            .collect();
        assert_eq!(
            frames,
            [
                (Guarantee::AtMostOnce, vec![0, 1, 2]),
                (Guarantee::ExactlyOnce, vec![0, 1, 2]),
                (Guarantee::AtMostOnce, vec![3, 4, 5]),
                (Guarantee::AtLeastOnce, vec![3, 4, 5]),
            ]
        );
    }

    /// Retransmission runs keep each message's ordering (an ordered run takes no unordered
    /// message of the same channel, nor the other way round), end before any other frame (a
    /// fragment queued between two ids of a run), and a run cut by the end of a packet leaves
    /// the rest queued for the next.
    #[test]
    fn retransmission_runs_end_at_ordering_changes_other_frames_and_full_packets() {
        let (mut c, t0) = default_connection();
        // 0, 1 ordered; 2, 3 unordered; 4, 5 ordered (all on channel 0); 6 fragmented; 7..
        // whole.
        for i in 0..30u8 {
            let ordered = matches!(i, 0 | 1 | 4 | 5);
            let opts = SendOptions::new(Guarantee::ExactlyOnce).ordered(ordered);
            let size = if i == 6 { 1500 } else { 100 };
            c.send_message(t0, &vec![i; size], opts).unwrap();
        }
        flushed_id_runs(&mut c, t0);
        let inflight = |s: FragState| matches!(s, FragState::InFlight(_));
        // 7, 8, then a fragment of 6, then 9: 9 must not join the frame of 7 and 8.
        for (id, frag) in [(7, 0), (8, 0), (6, 1), (9, 0)] {
            c.requeue(id, frag, inflight);
        }
        for id in (0..6).chain(10..30) {
            c.requeue(id, 0, inflight);
        }
        let mut frames = Vec::new();
        let mut packets = 0;
        while !c.retx.is_empty() {
            let pn = c.ledger.next_pn();
            let mut buf = vec![0u8; 1500];
            let mut w = Writer::new(&mut buf);
            assert!(c.write_messages(pn, &mut w));
            let n = w.position();
            c.ledger.finish_packet(t0, 1, true, 0, 0, 0);
            for f in wire::frames(&buf[..n]) {
                frames.push(match f.unwrap() {
                    Frame::Message(m) => (
                        m.chan_seq.is_some(),
                        m.fragment.map(|f| f.index),
                        vec![m.id],
                    ),
                    Frame::Messages(b) => {
                        let ms: Vec<_> = b.messages().collect();
                        for m in &ms {
                            assert_eq!(m.payload, &vec![m.id as u8; 100][..], "id {}", m.id);
                        }
                        (
                            b.first_seq().is_some(),
                            None,
                            ms.iter().map(|m| m.id).collect(),
                        )
                    }
                    other => panic!("{other:?}"),
                });
            }
            packets += 1;
            assert!(packets < 100);
        }
        let ids: Vec<u64> = frames.iter().flat_map(|f| f.2.clone()).collect();
        let expected: Vec<u64> = [7, 8, 6, 9, 0, 1, 2, 3, 4, 5]
            .into_iter()
            .chain(10..30)
            .collect();
        assert_eq!(ids, expected);
        assert_eq!(frames[0], (false, None, vec![7, 8]));
        assert_eq!(frames[1], (false, Some(1), vec![6]));
        assert_eq!(frames[2], (false, None, vec![9]));
        assert_eq!(frames[3], (true, None, vec![0, 1]));
        assert_eq!(frames[4], (false, None, vec![2, 3]));
        assert_eq!(frames[5], (true, None, vec![4, 5]));
        // 29 messages of 100 bytes and a fragment of about 1,400: three packets of 1,500.
        assert_eq!(packets, 3, "runs cut by the end of the packet");
        assert_all_in_flight(&c);
    }

    /// Messages queued again after a loss go out in MESSAGES runs, as new ones do: ids queued
    /// together share a frame, and a run ends where an id was not queued again (3), where
    /// its message ended meanwhile (6), at another channel (9) and at a fragmented message
    /// (10).
    #[test]
    fn retransmitted_messages_go_in_runs() {
        let (mut c, t0) = default_connection();
        for i in 0..12u8 {
            let opts = SendOptions::new(Guarantee::ExactlyOnce).channel(u8::from(i == 9));
            let size = if i == 10 { 3000 } else { 10 };
            c.send_message(t0, &vec![i; size], opts).unwrap();
        }
        let first = flushed_id_runs(&mut c, t0);
        assert_eq!(first[0], (0..9).collect::<Vec<u64>>());
        for id in (0..12).filter(|&id| id != 3) {
            let count = c.outbox_get(id).unwrap().count;
            for frag in 0..count {
                c.requeue(id, frag, |s| matches!(s, FragState::InFlight(_)));
            }
        }
        c.abandon_reliable(6, UndeliverableReason::Lost);
        let again = flushed_id_runs(&mut c, t0);
        let expected: [&[u64]; 8] = [
            &[0, 1, 2],
            &[4, 5],
            &[7, 8],
            &[9],
            &[10],
            &[10],
            &[10],
            &[11],
        ];
        assert_eq!(again, expected);
        assert!(c.retx.is_empty());
        assert_all_in_flight(&c);
    }

    /// A cursor left part-way through a fragmented message that was then abandoned (not at
    /// the front of the outbox) starts the next message at its first fragment.
    #[test]
    fn a_gap_resets_a_cursor_left_inside_a_fragmented_message() {
        let (mut c, now) = default_connection();
        let o = SendOptions::new(Guarantee::ExactlyOnce);
        c.send_message(now, &[9u8; 10], o).unwrap(); // id 0, stays pending
        c.send_message(now, &[1u8; 4000], o).unwrap(); // id 1, fragmented
        c.send_message(now, &[2u8; 10], o).unwrap(); // id 2
        c.send_message(now, &[3u8; 10], o).unwrap(); // id 3
        let pn = c.ledger.next_pn();
        let mut buf = vec![0u8; 1300];
        let mut w = Writer::new(&mut buf);
        assert!(c.next_reliable().is_some());
        assert!(c.write_new_reliable(pn, &mut w, None));
        assert_eq!(c.cursor.0, 1);
        assert!(c.cursor.1 > 0);
        c.abandon_reliable(1, UndeliverableReason::Lost);
        assert_eq!(c.out_base, 0);
        let mut buf = vec![0u8; 1300];
        let mut w = Writer::new(&mut buf);
        assert!(c.write_new_reliable(pn + 1, &mut w, None));
        let st = |id| {
            c.outbox_get(id)
                .map(|m| m.frags.iter().map(|f| f.state).collect::<Vec<_>>())
        };
        for id in [2, 3] {
            assert_eq!(
                st(id),
                Some(vec![FragState::InFlight(pn + 1)]),
                "message {id}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Writing the run of new reliable fragments in one pass (whole messages batched into
        /// MESSAGES frames) writes at least as many fragments as writing them one at a time
        /// as MESSAGE frames in the same room, and exactly the ones the one-at-a-time loop
        /// writes next: the same messages decoded, cursor, fragment states and ledger.
        #[test]
        fn one_pass_writes_what_one_at_a_time_writes(
            specs in proptest::collection::vec(
                (prop_oneof![0..100usize, 0..4000usize], any::<bool>(), any::<bool>()),
                0..40,
            ),
            abandon in proptest::collection::vec(any::<usize>(), 0..12),
            credit in prop_oneof![Just(1_000u64), 0..45u64],
            rooms in proptest::collection::vec(0..1300usize, 1..12),
        ) {
            #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
            let now = Instant::now();
            let mut fast = sender(now, &specs, &abandon, credit);
            let mut slow = sender(now, &specs, &abandon, credit);
            for room in rooms {
                let pn = fast.ledger.next_pn();
                let mut buf_fast = vec![0u8; room];
                let mut w = Writer::new(&mut buf_fast);
                let wrote_fast = fast.next_reliable().is_some() && fast.write_new_reliable(pn, &mut w, None);
                let len_fast = w.position();
                let got = messages_in(&buf_fast[..len_fast]);
                prop_assert_eq!(wrote_fast, !got.is_empty());
                // One at a time in the same room, then on (in more room) up to as many
                // fragments as the one pass wrote.
                let mut buf_slow = vec![0u8; room];
                let mut more = vec![0u8; 1 << 16];
                let mut in_room = None;
                let mut want = Vec::new();
                for (buf, limit) in [(&mut buf_slow, usize::MAX), (&mut more, got.len())] {
                    let mut w = Writer::new(buf);
                    let mut n = 0;
                    while want.len() + n < limit {
                        let Some((id, frag)) = slow.next_reliable() else { break };
                        if !slow.write_reliable_fragment(pn, id, frag, &mut w) {
                            break;
                        }
                        slow.cursor = (id, frag + 1);
                        n += 1;
                    }
                    let len = w.position();
                    want.extend(messages_in(&buf[..len]));
                    in_room.get_or_insert(want.len());
                }
                let in_room = in_room.unwrap_or_default();
                prop_assert!(got.len() >= in_room, "{} < {}", got.len(), in_room);
                prop_assert_eq!(&got, &want);
                // The one-at-a-time loop leaves the cursor where the next call would start.
                slow.next_reliable();
                fast.next_reliable();
                prop_assert_eq!(fast.cursor, slow.cursor);
                prop_assert_eq!(sent_state(&fast), sent_state(&slow));
                for c in [&mut fast, &mut slow] {
                    c.ledger.finish_packet(now, 1, true, 0, 0, 0);
                }
                // Runs taken apart: the one pass records a MESSAGES frame's ids as one.
                let frames = |c: &Connection| {
                    let pkt = *c.ledger.get(pn).unwrap();
                    let mut out = Vec::new();
                    for f in c.ledger.frames_of(&pkt) {
                        match f {
                            SentFrame::ReliableRun { id, count } => out.extend(
                                (id..id + u64::from(count))
                                    .map(|id| SentFrame::Reliable { id, frag: 0 }),
                            ),
                            f => out.push(f),
                        }
                    }
                    out
                };
                prop_assert_eq!(frames(&fast), frames(&slow));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// `write_messages` in one pass writes what it writes one frame at a time, packet
        /// after packet until nothing is left, with gaps (messages with an outcome) in both id
        /// spaces, a small at-most-once window and limited peer credit: the same messages in
        /// the same order, the same ledger entries (runs taken apart), cursors, `sent`
        /// counters and fragment states, in no more packets. (Packet by packet they may
        /// differ: a MESSAGES run can fit what two MESSAGE frames do not.) Then some packets
        /// are declared lost, some fragments acknowledged and some messages abandoned, and the
        /// retransmissions compare the same way.
        #[test]
        fn write_messages_in_one_pass_matches_one_frame_at_a_time(
            specs in proptest::collection::vec(
                (0..3u8, prop_oneof![0..60usize, 0..3000usize], any::<bool>(), 0..2u8, 0..3u8, prop::bool::weighted(0.15)),
                0..150,
            ),
            window in 64..80u64,
            credit in prop_oneof![Just(1_000u64), 0..100u64],
            room in 60..1500usize,
            lost in any::<u64>(),
            settled in any::<u64>(),
            retx_room in prop_oneof![Just(1500usize), 60..1500usize],
        ) {
            #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
            let t0 = Instant::now();
            let config = Arc::new(
                Config::default()
                    .max_datagram_size(1500)
                    .max_message_size(4096)
                    .amo_window(window)
                    .congestion(crate::CongestionControl::None),
            );
            /// Writes packets until nothing is left: the messages written, the ledger entries
            /// (runs taken apart) and the packet count.
            fn drain(c: &mut Connection, now: Instant, room: usize) -> Result<(Vec<Brief>, Vec<String>, u64), TestCaseError> {
                let mut msgs = Vec::new();
                let mut ledger = Vec::new();
                let mut packets = 0;
                loop {
                    let pn = c.ledger.next_pn();
                    let mut buf = vec![0u8; room];
                    let mut w = Writer::new(&mut buf);
                    let wrote = c.write_messages(pn, &mut w);
                    let n = w.position();
                    c.ledger.finish_packet(now, 1, true, 0, 0, 0);
                    let mut got = Vec::new();
                    for f in wire::frames(&buf[..n]) {
                        match f.unwrap() {
                            Frame::Message(m) => got.push(brief(&m)),
                            Frame::Messages(b) => got.extend(b.messages().map(|m| brief(&m))),
                            other => panic!("{other:?}"),
                        }
                    }
                    prop_assert_eq!(wrote, !got.is_empty());
                    let pkt = *c.ledger.get(pn).unwrap();
                    for f in c.ledger.frames_of(&pkt) {
                        match f {
                            SentFrame::ReliableRun { id, count } => ledger.extend(
                                (id..id + u64::from(count)).map(|id| format!("{:?}", SentFrame::Reliable { id, frag: 0 })),
                            ),
                            SentFrame::AmoRun { id, count } => ledger.extend(
                                (id..id + u64::from(count)).map(|id| format!("{:?}", SentFrame::Amo { id, frag: 0 })),
                            ),
                            f => ledger.push(format!("{f:?}")),
                        }
                    }
                    msgs.extend(got);
                    if !wrote {
                        break;
                    }
                    packets += 1;
                    prop_assert!(packets < 20_000);
                }
                Ok((msgs, ledger, packets))
            }
            let mut results = Vec::new();
            for one_at_a_time in [false, true] {
                let mut c = Connection::new(config.clone(), 1, 2, t0).unwrap();
                let mut now = t0;
                let mut abandon_rel = Vec::new();
                for &(g, size, ordered, ch, gap, abandon) in &specs {
                    now += Duration::from_micros(u64::from(gap / 2));
                    let g = [Guarantee::AtMostOnce, Guarantee::AtLeastOnce, Guarantee::ExactlyOnce]
                        [usize::from(g)];
                    let mut opts = SendOptions::new(g).channel(ch).ordered(ordered && g.is_reliable());
                    if abandon && !g.is_reliable() {
                        opts = opts.deadline(Duration::from_nanos(1));
                    }
                    let id = c.send_message(now, &vec![size as u8; size], opts).unwrap();
                    if abandon && g.is_reliable() {
                        abandon_rel.push(id.get());
                    }
                }
                now += Duration::from_millis(1);
                c.expire_deadlines(now);
                for id in abandon_rel {
                    c.abandon_reliable(id, UndeliverableReason::Lost);
                }
                c.peer_limit = c.out_base + credit;
                let switch = OneFrameAtATime::set(one_at_a_time);
                let (msgs, ledger, packets) = drain(&mut c, now, room)?;
                // Losses, chosen by message (the packets differ between the two ways), in id
                // order as a lost packet's are queued; then, before the retransmissions go
                // out, some fragments are acknowledged by an earlier copy and some messages
                // end (one in eight each), which leaves stale entries in the queue.
                for id in c.out_base..c.out_base + c.outbox.len() as u64 {
                    let count = c.outbox_get(id).map_or(0, |m| m.count);
                    for frag in 0..count {
                        if lost >> (id % 64) & 1 == 1 {
                            c.requeue(id, frag, |s| matches!(s, FragState::InFlight(_)));
                        }
                    }
                }
                let queued: Vec<_> = c.retx.iter().copied().collect();
                for (i, &(id, frag)) in queued.iter().enumerate() {
                    match settled >> (i % 21 * 3) & 7 {
                        0 => {
                            if let Some(f) = c.outbox_get_mut(id).and_then(|m| m.frags.get_mut(frag as usize)) {
                                f.state = FragState::Received;
                            }
                        }
                        1 => c.abandon_reliable(id, UndeliverableReason::Lost),
                        _ => {}
                    }
                }
                // Often full-sized packets this time, so that fragments held back by a small
                // room go too.
                let (rmsgs, rledger, rpackets) = drain(&mut c, now, retx_room)?;
                drop(switch);
                let (r, a) = (c.next_reliable(), c.next_amo());
                let sent: Vec<_> = c.amo_out.iter().map(|m| m.as_ref().map(|m| m.sent)).collect();
                let st: Vec<Option<Vec<bool>>> = sent_state(&c).into_iter().map(|m| m.map(|v| v.into_iter().map(|f| matches!(f, FragState::InFlight(_))).collect())).collect();
                results.push(((msgs, rmsgs), (ledger, rledger), c.cursor, c.amo_cursor, r, a, sent, st, (packets, rpackets), c.retx.len()));
            }
            prop_assert_eq!(&results[0].0, &results[1].0);
            prop_assert_eq!(&results[0].1, &results[1].1);
            prop_assert_eq!(&results[0].2, &results[1].2);
            prop_assert_eq!(&results[0].3, &results[1].3);
            prop_assert_eq!(&results[0].4, &results[1].4);
            prop_assert_eq!(&results[0].5, &results[1].5);
            prop_assert_eq!(&results[0].6, &results[1].6);
            prop_assert_eq!(&results[0].7, &results[1].7);
            prop_assert!(results[0].8.0 <= results[1].8.0);
            prop_assert!(results[0].8.1 <= results[1].8.1);
            prop_assert_eq!(results[0].9, results[1].9);
            if retx_room == 1500 {
                prop_assert_eq!(results[0].9, 0);
            }
        }
    }

    /// A gap (an at-most-once message with an outcome) ends an at-most-once run, and a run
    /// stops at the window's end, leaving the cursor there.
    #[test]
    fn an_at_most_once_run_ends_at_a_gap_and_at_the_window_end() {
        #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
        let t0 = Instant::now();
        let config = Arc::new(Config::default().amo_window(64));
        let mut c = Connection::new(config, 1, 2, t0).unwrap();
        for i in 0..70 {
            let mut opts = SendOptions::new(Guarantee::AtMostOnce);
            if i == 2 {
                opts = opts.deadline(Duration::from_nanos(1));
            }
            c.send_message(t0, &[7; 10], opts).unwrap();
        }
        let now = t0 + Duration::from_millis(1);
        c.expire_deadlines(now);
        let runs = flushed_id_runs(&mut c, now);
        assert_eq!(runs, [vec![0, 1], (3..64).collect::<Vec<u64>>()]);
        assert_eq!(c.amo_cursor, (64, 0));
        assert!(
            c.amo_out
                .iter()
                .skip(64)
                .all(|m| m.as_ref().unwrap().sent == 0)
        );
    }
}
