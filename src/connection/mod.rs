//! The connection: a sans-IO state machine for one peer.
//!
//! # Using a connection
//!
//! Methods fall in four groups:
//!
//! - **input**: [`handle_datagram`](Connection::handle_datagram) for every datagram that
//!   arrives, [`handle_timeout`](Connection::handle_timeout) when the deadline from
//!   [`poll_timeout`](Connection::poll_timeout) is reached;
//! - **commands**: [`send`](Connection::send), [`ack`](Connection::ack),
//!   [`reject`](Connection::reject), [`close`](Connection::close);
//! - **output**: [`poll_transmit`](Connection::poll_transmit) until it returns `None`,
//!   [`poll_event`](Connection::poll_event) until it returns `None`, then
//!   [`poll_timeout`](Connection::poll_timeout) for when to call back;
//! - **getters**: [`stats`](Connection::stats), [`state`](Connection::state), ...
//!
//! After any input or command, drain the outputs in that order. `now` must never go backwards
//! from one call to the next. The connection never reads a clock, never sleeps and never does
//! I/O; it panics only on a bug, never on anything a peer sends.

/// Defines `fn $name() -> bool`: always `true` in builds; in tests `true` unless the
/// thread-local switch `$switch` is set, so that a test can compare a fast path with the way
/// it replaces.
macro_rules! test_switch {
    ($(#[$doc:meta])* fn $name:ident; $(#[$switch_doc:meta])* static $switch:ident;) => {
        $(#[$doc])*
        #[cfg(not(test))]
        #[inline(always)]
        fn $name() -> bool {
            true
        }

        #[cfg(test)]
        thread_local! {
            $(#[$switch_doc])*
            pub(super) static $switch: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }

        #[cfg(test)]
        fn $name() -> bool {
            !$switch.with(std::cell::Cell::get)
        }
    };
}

mod channel;
mod ledger;
mod reassembly;
mod recv;
mod ring;
mod send;
mod transmit;

use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{AckMode, Config, ConfigError};
use crate::congestion::Controller;
use crate::error::{DatagramError, SendError, TokenError};
use crate::event::{AckToken, CloseReason, Event, TokenSink, UndeliverableReason};
pub use crate::limits::POOLED_BUFFER_COST;
use crate::limits::{self, ConnectionLimits};
use crate::message::SendOptions;
use crate::rangeset::RangeSet;
use crate::rtt::RttEstimator;
use crate::seq::MessageId;
use crate::stats::Stats;
use crate::timer::{Timer, TimerTable};
use crate::wire::{self, Crc32, Integrity};

use ledger::Ledger;
use recv::RecvState;
use send::{AmoOut, OutMsg};

/// Largest number of bytes a MESSAGE frame adds to its payload (type, flags, channel, and five
/// varints at their longest, the length at four bytes).
const MAX_MESSAGE_OVERHEAD: usize = 3 + 8 * 5 + 4;

/// Payload bytes per fragment for a given maximum datagram size: a fragment always fits in an
/// otherwise empty packet.
pub(crate) fn fragment_chunk(max_datagram_size: usize) -> usize {
    max_datagram_size - wire::HEADER_LEN - Crc32.tag_len() - MAX_MESSAGE_OVERHEAD
}

/// The life cycle of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Sending and receiving.
    Established,
    /// The application called `close`: no new messages are accepted; pending ones are given
    /// time (up to the drain timeout) to reach an outcome.
    Shutdown,
    /// CLOSE is sent and repeated until the peer acknowledges it or a timer ends it.
    Closing,
    /// The peer closed: only acknowledgements go out, until a timer ends it.
    Draining,
    /// Nothing more will be sent or received; the connection can be dropped.
    Closed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Established => "ESTABLISHED",
            State::Shutdown => "SHUTDOWN",
            State::Closing => "CLOSING",
            State::Draining => "DRAINING",
            State::Closed => "CLOSED",
        })
    }
}

/// One end of a reliable-messaging session with one peer.
///
/// See the [module documentation](self) for the call order. A minimal loop:
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, Instant};
/// use surely::{Config, Connection, Event, Guarantee};
///
/// let config = Arc::new(Config::default());
/// # #[allow(clippy::disallowed_methods)]
/// let mut now = Instant::now();
/// let mut a = Connection::new(config.clone(), 1, 2, now).unwrap();
/// let mut b = Connection::new(config, 2, 1, now).unwrap();
///
/// let id = a.send(now, b"hello", Guarantee::ExactlyOnce).unwrap();
/// let mut buf = [0u8; 1500];
/// let mut delivered = false;
/// for _ in 0..100 {
///     while let Some(n) = a.poll_transmit(now, &mut buf) {
///         let _ = b.handle_datagram(now, &buf[..n]);
///     }
///     while let Some(n) = b.poll_transmit(now, &mut buf) {
///         let _ = a.handle_datagram(now, &buf[..n]);
///     }
///     while let Some(ev) = b.poll_event() {
///         if let Event::Message(m) = ev {
///             assert_eq!(m.payload, b"hello");
///         }
///     }
///     while let Some(ev) = a.poll_event() {
///         if let Event::Delivered { id: done, .. } = ev {
///             assert_eq!(done, id);
///             delivered = true;
///         }
///     }
///     if delivered {
///         break;
///     }
///     let next = [a.poll_timeout(), b.poll_timeout()].into_iter().flatten().min();
///     now = next.unwrap_or(now + Duration::from_millis(1)).max(now);
///     a.handle_timeout(now);
///     b.handle_timeout(now);
/// }
/// assert!(delivered);
/// ```
pub struct Connection {
    config: Arc<Config>,
    /// The configured caps, checked in [`crate::limits`].
    limits: ConnectionLimits,
    /// The integrity check set by [`with_integrity`](Self::with_integrity); `None`: the
    /// default CRC-32, the check an endpoint makes before routing.
    integrity: Option<Box<dyn Integrity>>,
    local_cid: u64,
    remote_cid: u64,
    state: State,
    /// The reason reported in the one `Closed` event, once decided.
    close_reason: Option<CloseReason>,
    closed_event_sent: bool,
    /// Code and text of the CLOSE frame this side sends.
    close_frame: (u64, &'static str),
    close_pending: bool,
    /// The peer acknowledged a packet carrying our CLOSE.
    close_acked: bool,
    timers: TimerTable,
    events: VecDeque<Event>,
    stats: Stats,

    // ---- loss recovery (our packets) ----
    ledger: Ledger,
    /// Packet numbers the peer acknowledged, above the ledger's base.
    acked_pns: RangeSet,
    largest_acked: Option<u64>,
    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    pto_count: u32,
    loss_time: Option<Instant>,
    /// When the first RTT sample was taken: only packets sent after it can establish
    /// persistent congestion.
    first_rtt_sample: Option<Instant>,
    probes_pending: u8,
    ping_pending: bool,
    /// When a packet that carried an ACK and asked for an acknowledgement was last sent: the
    /// peer's acknowledgement of it lets this end stop reporting the ranges below.
    last_ack_elicited: Option<Instant>,
    last_sent: Instant,
    last_received: Instant,

    // ---- reliable messages we send ----
    /// Lowest reliable id without an outcome.
    out_base: u64,
    /// Reliable messages from `out_base`, `None` once they have an outcome.
    outbox: ring::Ring<OutMsg>,
    /// Next never-sent fragment (id, fragment index).
    cursor: (u64, u32),
    /// Fragments to send again, oldest first. Stale entries are skipped when popped.
    retx: VecDeque<(u64, u32)>,
    /// The peer lets us use reliable ids below this.
    peer_limit: u64,
    /// Reliable ids the peer reported complete above `out_base`.
    msg_acked: RangeSet,
    /// Abandoned reliable messages the peer has not yet confirmed skipping.
    forward: Vec<wire::ForwardEntry>,
    forward_dirty: bool,
    /// Where the current round of FORWARD transmissions continues.
    forward_cursor: usize,
    /// Next channel sequence number per ordered channel.
    chan_seq: Option<Box<[u64; 256]>>,

    // ---- at-most-once messages we send ----
    amo_base: u64,
    amo_out: ring::Ring<AmoOut>,
    amo_cursor: (u64, u32),
    /// The AMO_FLOOR value the peer is known to have received.
    amo_floor_acked: u64,
    amo_floor_dirty: bool,

    /// Message deadlines: (deadline, reliable?, id). Stale entries are skipped when popped.
    deadlines: BinaryHeap<std::cmp::Reverse<(Instant, bool, u64)>>,
    /// Messages accepted by `send` without an outcome yet, and their payload bytes.
    pending_messages: usize,
    pending_bytes: usize,
    /// Emptied payload buffers, reused for later messages.
    pool: Vec<Vec<u8>>,
    /// What `pool_bytes` leaves for more buffers in the pool.
    pool_room: usize,

    // ---- receiving ----
    rx: RecvState,
    token_sink: Option<Arc<TokenSink>>,
    dropped_tokens: Vec<u64>,
    scratch: Vec<std::ops::Range<u64>>,
    frame_scratch: Vec<ledger::SentFrame>,
    probe_scratch: Vec<(u64, ledger::SentPacket)>,
    /// Packet numbers skipped on purpose, ascending (most recent last): an ACK for one of
    /// them proves the peer acknowledges packets it never received (RFC 9000 section 21.4).
    skipped_pns: VecDeque<u64>,
    /// The next packet number to skip.
    next_skip: u64,
    rng: crate::rng::Rng,
    /// Set by a frame handler that found the peer breaking the protocol.
    violation: Option<&'static str>,
    held_scratch: Vec<channel::Held>,
    forward_scratch: Vec<wire::ForwardEntry>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("local_cid", &self.local_cid)
            .field("remote_cid", &self.remote_cid)
            .field("state", &self.state)
            .field("pending_messages", &self.pending_messages)
            .field("bytes_in_flight", &self.ledger.bytes_in_flight)
            .field("forward", &self.forward.len())
            .field("forward_dirty", &self.forward_dirty)
            .field("msg_ack_dirty", &self.rx.msg_ack_dirty)
            .field("reject_dirty", &self.rx.reject_dirty)
            .field("amo_floor_dirty", &self.amo_floor_dirty)
            .field("probes_pending", &self.probes_pending)
            .field("retx", &self.retx.len())
            .field("peer_limit", &self.peer_limit)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Creates a connection. `local_cid` is the id the peer puts on datagrams for us;
    /// `remote_cid` the one we put on datagrams for it. Both ends must use equal
    /// `initial_packet_number` and `initial_message_id` settings.
    pub fn new(
        config: Arc<Config>,
        local_cid: u64,
        remote_cid: u64,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let first_id = config.initial_message_id;
        let mds = config.max_datagram_size as u64;
        let token_sink = match config.ack_mode {
            AckMode::AfterProcessing => Some(Arc::new(TokenSink::default())),
            AckMode::OnReceipt => None,
        };
        let mut conn = Connection {
            integrity: None,
            local_cid,
            remote_cid,
            state: State::Established,
            close_reason: None,
            closed_event_sent: false,
            close_frame: (0, ""),
            close_pending: false,
            close_acked: false,
            timers: TimerTable::default(),
            events: VecDeque::new(),
            stats: Stats::default(),
            ledger: Ledger::new(config.initial_packet_number),
            acked_pns: RangeSet::new(limits::ACKED_PN_RANGES),
            largest_acked: None,
            rtt: RttEstimator::new(config.initial_rtt),
            cc: config.congestion.build(mds),
            pto_count: 0,
            loss_time: None,
            first_rtt_sample: None,
            probes_pending: 0,
            ping_pending: false,
            last_ack_elicited: None,
            last_sent: now,
            last_received: now,
            out_base: first_id,
            outbox: ring::Ring::new(),
            cursor: (first_id, 0),
            retx: VecDeque::new(),
            peer_limit: first_id + crate::config::MIN_WINDOW,
            msg_acked: RangeSet::new(limits::MSG_ACKED_RANGES),
            forward: Vec::new(),
            forward_dirty: false,
            forward_cursor: 0,
            chan_seq: None,
            amo_base: first_id,
            amo_out: ring::Ring::new(),
            amo_cursor: (first_id, 0),
            amo_floor_acked: first_id,
            amo_floor_dirty: false,
            deadlines: BinaryHeap::new(),
            pending_messages: 0,
            pending_bytes: 0,
            pool: Vec::new(),
            pool_room: config.pool_bytes,
            rx: RecvState::new(&config),
            token_sink,
            dropped_tokens: Vec::new(),
            scratch: Vec::new(),
            frame_scratch: Vec::new(),
            probe_scratch: Vec::new(),
            violation: None,
            skipped_pns: VecDeque::with_capacity(limits::SKIPPED_PNS_KEPT),
            next_skip: 0,
            rng: crate::rng::Rng::new(config.rng_seed ^ local_cid.rotate_left(17)),
            held_scratch: Vec::new(),
            forward_scratch: Vec::new(),
            limits: ConnectionLimits::new(&config),
            config,
        };
        conn.next_skip = conn.config.initial_packet_number + conn.skip_interval();
        conn.timers.set(Timer::Idle, now + conn.config.idle_timeout);
        conn.arm_keepalive();
        Ok(conn)
    }

    /// Replaces the integrity check (default: CRC-32). Both ends must use the same one.
    pub fn with_integrity(mut self, integrity: Box<dyn Integrity>) -> Self {
        self.integrity = Some(integrity);
        self
    }

    /// The integrity check datagrams are sealed and verified with.
    fn integrity(&self) -> &dyn Integrity {
        self.integrity.as_deref().unwrap_or(&Crc32)
    }

    // ------------------------------------------------------------------ getters

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the connection is closed and can be dropped.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The id the peer puts on datagrams for us.
    pub fn local_cid(&self) -> u64 {
        self.local_cid
    }

    /// The id we put on datagrams for the peer.
    pub fn remote_cid(&self) -> u64 {
        self.remote_cid
    }

    /// Counters, RTT and the latency histogram.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.rtt = self.rtt.smoothed();
        s.min_rtt = self.rtt.min();
        s.cwnd = self.cc.window();
        s
    }

    /// Messages accepted by `send` that have no outcome yet.
    pub fn pending_messages(&self) -> usize {
        self.pending_messages
    }

    /// Messages given up whose skipping the peer has not confirmed yet (they count against
    /// `max_pending_messages` too).
    pub fn unconfirmed_abandoned(&self) -> usize {
        self.forward.len()
    }

    /// Payload bytes of those messages.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes of payload and reassembly held by the receive side (bounded by
    /// `recv_buffer_bytes`).
    pub fn receive_buffered_bytes(&self) -> usize {
        self.rx.buffered_bytes()
    }

    // ------------------------------------------------------------------ commands

    /// Queues a message; returns its id. Every message accepted here ends in exactly one
    /// outcome event: [`Event::Delivered`] or [`Event::Undeliverable`].
    ///
    /// `options` is a [`Guarantee`](crate::Guarantee) or full [`SendOptions`].
    #[inline]
    pub fn send(
        &mut self,
        now: Instant,
        payload: &[u8],
        options: impl Into<SendOptions>,
    ) -> Result<MessageId, SendError> {
        self.drain_tokens(now);
        self.send_message(now, payload, options.into())
    }

    /// Marks a message processed (acknowledge-after-processing mode): the peer is told it is
    /// complete.
    pub fn ack(&mut self, now: Instant, token: AckToken) -> Result<(), TokenError> {
        let (id, sink) = token.take();
        self.check_token(&sink)?;
        self.drain_tokens(now);
        self.rx_complete(now, id);
        Ok(())
    }

    /// Rejects a message (acknowledge-after-processing mode): it is not acknowledged, the peer
    /// sends it again and it is delivered again.
    pub fn reject(&mut self, now: Instant, token: AckToken) -> Result<(), TokenError> {
        let (id, sink) = token.take();
        self.check_token(&sink)?;
        self.drain_tokens(now);
        self.rx_reject(now, id);
        Ok(())
    }

    /// Starts a graceful close: no new messages are accepted; pending ones get up to the
    /// drain timeout to reach an outcome; then the peer is told, with everything this side
    /// has acknowledged. The final event is [`Event::Closed`].
    pub fn close(&mut self, now: Instant) {
        if self.state != State::Established {
            return;
        }
        log::debug!("conn {}: {} -> SHUTDOWN", self.local_cid, self.state);
        self.state = State::Shutdown;
        self.close_reason = Some(CloseReason::Local);
        self.timers
            .set(Timer::Drain, now + self.config.drain_timeout);
        self.maybe_finish_shutdown(now);
    }

    // ------------------------------------------------------------------ input

    /// Processes one datagram from the peer. A datagram that is dropped leaves the
    /// connection as it was (the error says why; it is also counted in [`Stats`]), except
    /// for a protocol violation, which closes the connection.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Result<(), DatagramError> {
        self.drain_tokens(now);
        self.on_datagram(now, datagram, false)
    }

    /// [`handle_datagram`](Self::handle_datagram) for a datagram whose CRC-32 was already
    /// verified: an [`Endpoint`](crate::Endpoint) checks every datagram before it routes it.
    /// The check is not repeated when this connection uses CRC-32 too; a connection with
    /// another integrity check (see [`with_integrity`](Self::with_integrity)) makes its own.
    pub(crate) fn handle_crc32_verified_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
    ) -> Result<(), DatagramError> {
        self.drain_tokens(now);
        self.on_datagram(now, datagram, self.integrity.is_none())
    }

    /// Processes expired timers. Call when [`poll_timeout`](Self::poll_timeout)'s deadline
    /// has passed (calling earlier or more often is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drain_tokens(now);
        if self.state == State::Closed {
            return;
        }
        if self.timers.is_expired(Timer::Close, now) {
            self.timers.stop(Timer::Close);
            self.enter_closed(now);
            return;
        }
        if self.timers.is_expired(Timer::Idle, now) {
            log::debug!("conn {}: idle timeout", self.local_cid);
            self.close_reason.get_or_insert(CloseReason::IdleTimeout);
            self.fail_all_pending(UndeliverableReason::ConnectionLost);
            self.enter_closed(now);
            return;
        }
        if self.timers.is_expired(Timer::Ack, now) {
            self.timers.stop(Timer::Ack);
            self.rx.ack_due = true;
        }
        if self.timers.is_expired(Timer::Loss, now) {
            self.timers.stop(Timer::Loss);
            self.on_loss_timer(now);
        }
        if self.timers.is_expired(Timer::Keepalive, now) {
            self.timers.stop(Timer::Keepalive);
            // With ack-eliciting packets in flight the probe timeout already tests the path;
            // a keepalive then would only push the probe timer back.
            if matches!(self.state, State::Established | State::Shutdown)
                && self.ledger.eliciting_in_flight == 0
            {
                self.ping_pending = true;
            }
        }
        if self.timers.is_expired(Timer::Deadline, now) {
            self.timers.stop(Timer::Deadline);
            self.expire_deadlines(now);
        }
        if self.timers.is_expired(Timer::Reassembly, now) {
            self.timers.stop(Timer::Reassembly);
            self.rx_expire_reassembly(now);
        }
        if self.timers.is_expired(Timer::Drain, now) {
            self.timers.stop(Timer::Drain);
            if self.state == State::Shutdown {
                self.fail_all_pending(UndeliverableReason::ConnectionClosed);
            }
        }
        // Any timer above may have given the last pending message its outcome.
        self.maybe_finish_shutdown(now);
    }

    // ------------------------------------------------------------------ output

    /// The next event for the application, if any.
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        self.on_event_taken(&ev);
        Some(ev)
    }

    /// Whether the next event [`poll_event`](Self::poll_event) returns is there and is not
    /// [`Event::Closed`].
    #[inline]
    pub(crate) fn has_event_other_than_closed(&self) -> bool {
        self.events
            .front()
            .is_some_and(|e| !matches!(e, Event::Closed { .. }))
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None` when the
    /// connection is closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        self.timers.next()
    }

    /// Gives back a payload buffer (from a received message or an Undeliverable event) for
    /// reuse, so that steady-state operation allocates nothing.
    ///
    /// The pool keeps at most [`Config::pool_bytes`](crate::Config::pool_bytes); a buffer
    /// past that is freed.
    #[inline]
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if let Some(room) = limits::pool_room_after(self.pool_room, capacity) {
            buf.clear();
            self.pool_room = room;
            self.pool.push(buf);
        }
    }

    // ------------------------------------------------------------------ internals

    /// An empty buffer for `len` bytes: from the pool (it grows, if need be, as it is filled),
    /// or a new one.
    #[inline]
    fn take_buffer(&mut self, len: usize) -> Vec<u8> {
        match self.pool.pop() {
            Some(mut b) => {
                self.pool_room += limits::pooled_cost(b.capacity());
                // Empty already; said again so that the caller's writes start at 0.
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    fn give_buffer(&mut self, buf: Vec<u8>) {
        self.recycle(buf);
    }

    fn check_token(&self, sink: &Option<Arc<TokenSink>>) -> Result<(), TokenError> {
        match (sink, &self.token_sink) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => Ok(()),
            _ => Err(TokenError::WrongConnection),
        }
    }

    /// Dropped tokens count as rejections. Inlined: without tokens (acknowledge-on-receipt
    /// mode) this is one test on every call.
    #[inline]
    fn drain_tokens(&mut self, now: Instant) {
        if self.token_sink.is_some() {
            self.drain_token_sink(now);
        }
    }

    fn drain_token_sink(&mut self, now: Instant) {
        let Some(sink) = &self.token_sink else {
            return;
        };
        sink.drain_into(&mut self.dropped_tokens);
        if self.dropped_tokens.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.dropped_tokens);
        for &id in &ids {
            self.rx_reject(now, id);
        }
        self.dropped_tokens = ids;
        self.dropped_tokens.clear();
    }

    fn arm_keepalive(&mut self) {
        match self.config.keepalive_interval {
            Some(k) if matches!(self.state, State::Established | State::Shutdown) => {
                self.timers.set(Timer::Keepalive, self.last_sent + k)
            }
            _ => self.timers.stop(Timer::Keepalive),
        }
    }

    /// In `Shutdown`, moves to `Closing` once nothing is pending.
    fn maybe_finish_shutdown(&mut self, now: Instant) {
        if self.state != State::Shutdown || self.pending_messages > 0 {
            return;
        }
        self.start_closing(now, 0, "");
    }

    /// Sends CLOSE (with final acknowledgements) and waits for it to be acknowledged.
    fn start_closing(&mut self, now: Instant, code: u64, reason: &'static str) {
        log::debug!("conn {}: {} -> CLOSING", self.local_cid, self.state);
        self.fail_all_pending(UndeliverableReason::ConnectionClosed);
        self.state = State::Closing;
        self.close_frame = (code, reason);
        self.close_pending = true;
        self.rx.msg_ack_dirty = true;
        self.timers.stop(Timer::Drain);
        self.timers.stop(Timer::Keepalive);
        self.timers.stop(Timer::Deadline);
        self.timers.stop(Timer::Reassembly);
        self.timers.set(Timer::Close, now + self.close_period());
    }

    /// The peer closed: acknowledge, report, and drain.
    fn enter_draining(&mut self, now: Instant, code: u64, reason: String) {
        if matches!(self.state, State::Draining | State::Closed) {
            return;
        }
        let was_closing = self.state == State::Closing;
        log::debug!("conn {}: {} -> DRAINING", self.local_cid, self.state);
        self.fail_all_pending(UndeliverableReason::ConnectionClosed);
        if !was_closing {
            self.close_reason = Some(CloseReason::Peer { code, reason });
        }
        self.state = State::Draining;
        self.close_pending = false;
        self.timers.clear();
        self.timers.set(Timer::Close, now + self.close_period());
        self.emit_closed();
        if was_closing {
            // Both sides closed: nothing left to say.
            self.enter_closed(now);
        }
    }

    fn enter_closed(&mut self, _now: Instant) {
        if self.state == State::Closed {
            return;
        }
        log::debug!("conn {}: {} -> CLOSED", self.local_cid, self.state);
        self.fail_all_pending(UndeliverableReason::ConnectionClosed);
        self.state = State::Closed;
        self.timers.clear();
        self.emit_closed();
    }

    fn emit_closed(&mut self) {
        if !self.closed_event_sent {
            self.closed_event_sent = true;
            let reason = self.close_reason.clone().unwrap_or(CloseReason::Local);
            self.events.push_back(Event::Closed { reason });
        }
    }

    /// Closes at once because the peer broke the protocol.
    fn protocol_violation(&mut self, now: Instant, why: &'static str) -> DatagramError {
        log::debug!("conn {}: protocol violation: {why}", self.local_cid);
        if matches!(self.state, State::Established | State::Shutdown) {
            self.close_reason = Some(CloseReason::ProtocolViolation(why));
            self.start_closing(now, 1, why);
            self.emit_closed();
        }
        DatagramError::ProtocolViolation(why)
    }

    /// Packets between two deliberately skipped packet numbers: 64 to 255, drawn at random so
    /// that a peer cannot predict which numbers to leave out of a forged acknowledgement.
    fn skip_interval(&mut self) -> u64 {
        64 + self.rng.below(192)
    }

    /// Skips a packet number when one is due; remembers the last few skipped.
    ///
    /// The skip waits for a packet sent while another is in flight. A packet that goes with
    /// nothing in flight, as a request or its answer does, would otherwise follow a gap that
    /// looks like a loss and draws an acknowledgement of its own. Such a sender is not held
    /// back by its congestion window, so an optimistic acknowledgement has nothing to speed
    /// up; a sender the window holds back has packets in flight, and skips as before.
    fn maybe_skip_pn(&mut self, now: Instant) {
        if self.ledger.next_pn() < self.next_skip || self.ledger.bytes_in_flight == 0 {
            return;
        }
        let pn = self.ledger.skip_pn(now);
        if !limits::admit_skipped_pn(self.skipped_pns.len()) {
            self.skipped_pns.pop_front();
        }
        self.skipped_pns.push_back(pn);
        self.next_skip = pn + 1 + self.skip_interval();
    }

    /// Three probe timeouts: long enough for a CLOSE and its acknowledgement to cross.
    fn close_period(&self) -> std::time::Duration {
        3 * self.base_pto()
    }

    /// The probe timeout before backoff, from the RTT estimate and the configuration: what the
    /// loss timer, the closing period and persistent congestion measure time in.
    pub(super) fn base_pto(&self) -> std::time::Duration {
        self.rtt.pto(
            self.config.timer_granularity,
            self.config.max_ack_delay,
            self.config.min_rto,
        )
    }
}

#[cfg(test)]
mod tests;
