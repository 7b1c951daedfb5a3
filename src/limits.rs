//! Resource caps: every bound on what a connection or an endpoint holds, and the one place each
//! is checked.
//!
//! Configurable caps come from [`Config`] and [`EndpointConfig`] and are copied into
//! [`ConnectionLimits`] and [`EndpointLimits`] when a connection or an endpoint is made. Fixed
//! caps are the constants below. A data structure that bounds itself (a [`RangeSet`] drops its
//! lowest range when full) takes its capacity from here.
//!
//! [`RangeSet`]: crate::rangeset::RangeSet

use std::time::Instant;

use crate::config::Config;
use crate::endpoint::EndpointConfig;
use crate::endpoint::rate::RateLimiter;
use crate::error::SendError;

// ---------------------------------------------------------------------------- wire format

/// Most ranges in one ACK frame, the first range included.
pub const MAX_ACK_RANGES: usize = 64;
/// Most ranges in one MSG_ACK frame.
pub const MAX_MSG_ACK_RANGES: usize = 64;
/// Longest CLOSE reason, in bytes.
pub const MAX_REASON_LEN: usize = 255;
/// The longest cookie a RETRY may carry, in bytes.
pub const MAX_COOKIE_LEN: usize = 64;

// ---------------------------------------------------------------------------- per connection

/// Default of [`Config::ack_ranges_tracked`]: packet-number ranges a receiver remembers for
/// acknowledgements and duplicate detection.
pub(crate) const RECEIVED_PN_RANGES: usize = 256;
/// Packet numbers kept for duplicate detection below what the peer knows we received; older
/// packets are dropped as stale.
pub(crate) const RECEIVED_PN_HISTORY: u64 = 4096;
/// Ranges of our packet numbers the peer acknowledged, kept above the sent-packet ledger's base.
pub(crate) const ACKED_PN_RANGES: usize = 1024;
/// Ranges of reliable ids the peer reported complete, kept above the lowest pending id.
pub(crate) const MSG_ACKED_RANGES: usize = 256;
/// Skipped packet numbers remembered for optimistic-ACK detection.
pub(crate) const SKIPPED_PNS_KEPT: usize = 16;
/// What one pooled buffer counts against `pool_bytes` besides its capacity: its `Vec` in the
/// pool and the allocator's overhead, so that many tiny buffers stay bounded too.
pub const POOLED_BUFFER_COST: usize = 32;
/// What one position held back in an ordered channel counts against `recv_buffer_bytes`
/// besides the payload held there: every position from the channel's next one up to the
/// highest held (a message, a skip, or a gap between them), so that a peer cannot make the
/// receiver hold unbounded bookkeeping with skips, empty messages or positions far ahead.
pub(crate) const HELD_ENTRY_COST: usize = 64;
/// What one `Message` event waiting for the application counts against `recv_buffer_bytes`
/// besides its payload, so that a peer cannot queue unbounded events with empty messages while
/// the application is not polling.
pub(crate) const QUEUED_EVENT_COST: usize = 64;

/// What a message under reassembly counts against `recv_buffer_bytes`: its bytes, one byte per
/// fragment for the map of those received, and the `Message` event it becomes, so that
/// completing it never takes the receiver past the limit.
#[inline]
pub(crate) const fn partial_cost(total_len: usize, fragments: usize) -> usize {
    total_len
        .saturating_add(fragments)
        .saturating_add(QUEUED_EVENT_COST)
}

/// What the largest message a peer may send counts against `recv_buffer_bytes` at its peak:
/// [`partial_cost`] of `max_message_size` cut into `max_fragments` fragments. A smaller
/// receive buffer could never take that message in, so `Config::validate` refuses it.
#[inline]
pub(crate) const fn largest_message_cost(max_message_size: usize, max_fragments: u32) -> usize {
    partial_cost(max_message_size, max_fragments as usize)
}

/// Whether a received ACK frame with `ranges` ranges (the first included) is within
/// [`MAX_ACK_RANGES`].
#[inline]
pub(crate) const fn ack_ranges_ok(ranges: u64) -> bool {
    ranges <= MAX_ACK_RANGES as u64
}

/// Whether a received MSG_ACK frame with `ranges` ranges is within [`MAX_MSG_ACK_RANGES`].
#[inline]
pub(crate) const fn msg_ack_ranges_ok(ranges: u64) -> bool {
    ranges <= MAX_MSG_ACK_RANGES as u64
}

/// Whether a CLOSE reason of `len` bytes is within [`MAX_REASON_LEN`].
#[inline]
pub(crate) const fn reason_len_ok(len: u64) -> bool {
    len <= MAX_REASON_LEN as u64
}

/// Whether a cookie of `len` bytes is within [`MAX_COOKIE_LEN`].
#[inline]
pub(crate) const fn cookie_len_ok(len: usize) -> bool {
    len <= MAX_COOKIE_LEN
}

/// Whether one more skipped packet number fits in memory without forgetting the oldest.
#[inline]
pub(crate) const fn admit_skipped_pn(kept: usize) -> bool {
    kept < SKIPPED_PNS_KEPT
}

/// The room the pool has left (of `pool_bytes`) after keeping one more emptied buffer of
/// `capacity` bytes, or `None` if it has no room for it (or it is empty: not worth keeping).
#[inline]
pub(crate) const fn pool_room_after(room: usize, capacity: usize) -> Option<usize> {
    if capacity == 0 {
        return None;
    }
    room.checked_sub(pooled_cost(capacity))
}

/// What a pooled buffer of `capacity` bytes counts against `pool_bytes`.
#[inline]
pub(crate) const fn pooled_cost(capacity: usize) -> usize {
    capacity.saturating_add(POOLED_BUFFER_COST)
}

/// The configurable caps of one connection, copied from its [`Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    max_datagram_size: usize,
    max_message_size: usize,
    max_fragments: u32,
    max_pending_messages: usize,
    send_buffer_bytes: usize,
    recv_buffer_bytes: usize,
    max_partial_messages: usize,
    window: u64,
}

impl ConnectionLimits {
    pub(crate) fn new(config: &Config) -> Self {
        ConnectionLimits {
            max_datagram_size: config.max_datagram_size,
            max_message_size: config.max_message_size,
            max_fragments: config.max_fragments,
            max_pending_messages: config.max_pending_messages,
            send_buffer_bytes: config.send_buffer_bytes,
            recv_buffer_bytes: config.recv_buffer_bytes,
            max_partial_messages: config.max_partial_messages,
            window: config.window,
        }
    }

    /// `send` of a `len`-byte message: [`SendError::TooLarge`] above `max_message_size`.
    #[inline]
    pub(crate) fn admit_size(&self, len: usize) -> Result<(), SendError> {
        if len > self.max_message_size {
            return Err(SendError::TooLarge {
                size: len,
                max: self.max_message_size,
            });
        }
        Ok(())
    }

    /// `send` of a `len`-byte message while `messages` messages (pending, and abandoned but not
    /// yet confirmed skipped) and `bytes` payload bytes are held: [`SendError::Backpressure`]
    /// at `max_pending_messages` or past `send_buffer_bytes`.
    #[inline]
    pub(crate) fn admit_send(
        &self,
        len: usize,
        messages: usize,
        bytes: usize,
    ) -> Result<(), SendError> {
        if messages >= self.max_pending_messages
            || bytes.saturating_add(len) > self.send_buffer_bytes
        {
            return Err(SendError::Backpressure);
        }
        Ok(())
    }

    /// A received fragment announcing `count` fragments and `total_len` bytes: within
    /// `max_fragments` and `max_message_size`.
    #[inline]
    pub(crate) fn admit_fragment(&self, count: u64, total_len: u64) -> bool {
        count <= u64::from(self.max_fragments) && total_len <= self.max_message_size as u64
    }

    /// `len` more bytes held by the receiver, which holds `buffered`: within
    /// `recv_buffer_bytes`.
    #[inline]
    pub(crate) fn admit_recv_bytes(&self, buffered: usize, len: usize) -> bool {
        buffered.saturating_add(len) <= self.recv_buffer_bytes
    }

    /// `len` more bytes held back in an ordered channel, or a message under reassembly ahead
    /// of its channel's next position, with `buffered` held in all: only while the largest
    /// message in line still fits besides ([`in_line_reserve`](Self::in_line_reserve)).
    /// Held messages wait for the one in line before them; if they could fill the buffer,
    /// that message would never find room, and nothing held would ever be released.
    #[inline]
    pub(crate) fn admit_held(&self, buffered: usize, len: usize) -> bool {
        self.admit_recv_bytes(buffered.saturating_add(self.in_line_reserve()), len)
    }

    /// What the largest message in line can take: the largest message this end accepts in
    /// fragments, or a whole one in a datagram (a peer may send whole messages up to its
    /// datagram size, whatever `max_message_size` says here).
    #[inline]
    pub(crate) fn in_line_reserve(&self) -> usize {
        largest_message_cost(self.max_message_size, self.max_fragments)
            .max(self.max_datagram_size.saturating_add(QUEUED_EVENT_COST))
    }

    /// One more message under reassembly, with `partials` already: within
    /// `max_partial_messages`.
    #[inline]
    pub(crate) fn admit_partial(&self, partials: usize) -> bool {
        partials < self.max_partial_messages
    }

    /// Reliable id (or ordered-channel position) `id` against the receive window starting at
    /// `base`.
    #[inline]
    pub(crate) fn in_window(&self, id: u64, base: u64) -> bool {
        id < base.saturating_add(self.window)
    }
}

// ---------------------------------------------------------------------------- per endpoint

/// Default of [`EndpointConfig::max_queued_handshake_packets`]: handshake packets (RETRY,
/// ACCEPT, REFUSE) waiting for `poll_transmit`; beyond, answers are dropped (counted in
/// [`EndpointStats::dropped_queue_full`](crate::endpoint::EndpointStats::dropped_queue_full)).
pub const MAX_QUEUED_HANDSHAKE_PACKETS: usize = 1024;
/// Default of [`EndpointConfig::max_queued_refused_events`]:
/// [`EndpointEvent::Refused`](crate::EndpointEvent::Refused) events waiting for `poll_event`;
/// beyond, they are only counted
/// ([`EndpointStats::events_dropped`](crate::endpoint::EndpointStats::events_dropped)).
pub const MAX_QUEUED_REFUSED_EVENTS: usize = 1024;
/// Most RETRYs a client follows in one handshake; later ones are ignored.
pub const MAX_RETRIES_FOLLOWED: u32 = 4;

/// The caps of an endpoint: connections (handshakes in progress included), the handshake rate,
/// and its queues.
#[derive(Clone, Debug)]
pub(crate) struct EndpointLimits {
    max_connections: usize,
    max_queued_handshake_packets: usize,
    max_queued_refused_events: usize,
    handshakes: RateLimiter,
}

impl EndpointLimits {
    pub(crate) fn new(config: &EndpointConfig) -> Self {
        EndpointLimits {
            max_connections: config.max_connections,
            max_queued_handshake_packets: config.max_queued_handshake_packets,
            max_queued_refused_events: config.max_queued_refused_events,
            handshakes: RateLimiter::new(config.max_handshakes_per_sec, config.handshake_burst),
        }
    }

    /// One more connection (or outgoing handshake) beside `open` and `connecting`: within
    /// `max_connections`.
    #[inline]
    pub(crate) fn admit_connection(&self, open: usize, connecting: usize) -> bool {
        open + connecting < self.max_connections
    }

    /// An answer to an address not validated yet: within `max_handshakes_per_sec` and
    /// `handshake_burst` (takes a token).
    #[inline]
    pub(crate) fn admit_handshake(&mut self, now: Instant) -> bool {
        self.handshakes.try_take(now)
    }

    /// One more handshake packet beside `queued`: within `max_queued_handshake_packets`.
    #[inline]
    pub(crate) fn admit_handshake_packet(&self, queued: usize) -> bool {
        queued < self.max_queued_handshake_packets
    }

    /// One more Refused event beside `queued`: within `max_queued_refused_events`.
    #[inline]
    pub(crate) fn admit_refused_event(&self, queued: usize) -> bool {
        queued < self.max_queued_refused_events
    }

    /// Following one more RETRY after `followed`: within [`MAX_RETRIES_FOLLOWED`].
    #[inline]
    pub(crate) fn admit_retry(followed: u32) -> bool {
        followed < MAX_RETRIES_FOLLOWED
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn conn() -> ConnectionLimits {
        ConnectionLimits::new(
            &Config::default()
                .max_message_size(1000)
                .max_fragments(10)
                .max_pending_messages(5)
                .send_buffer_bytes(2000)
                .recv_buffer_bytes(3000)
                .max_partial_messages(4)
                .window(256),
        )
    }

    #[test]
    fn message_size() {
        let l = conn();
        assert_eq!(l.admit_size(999), Ok(()));
        assert_eq!(l.admit_size(1000), Ok(()));
        assert_eq!(
            l.admit_size(1001),
            Err(SendError::TooLarge {
                size: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn pending_messages_and_send_bytes() {
        let l = conn();
        assert_eq!(l.admit_send(0, 4, 0), Ok(()));
        assert_eq!(l.admit_send(0, 5, 0), Err(SendError::Backpressure));
        assert_eq!(l.admit_send(0, 6, 0), Err(SendError::Backpressure));
        assert_eq!(l.admit_send(1, 0, 1998), Ok(()));
        assert_eq!(l.admit_send(1, 0, 1999), Ok(()));
        assert_eq!(l.admit_send(1, 0, 2000), Err(SendError::Backpressure));
        assert_eq!(l.admit_send(1, 0, usize::MAX), Err(SendError::Backpressure));
    }

    #[test]
    fn fragments() {
        let l = conn();
        assert!(l.admit_fragment(9, 999));
        assert!(l.admit_fragment(10, 1000));
        assert!(!l.admit_fragment(11, 1000));
        assert!(!l.admit_fragment(10, 1001));
        assert!(!l.admit_fragment(u64::MAX, u64::MAX));
    }

    #[test]
    fn receive_bytes_and_partials() {
        let l = conn();
        assert!(l.admit_recv_bytes(2999, 0));
        assert!(l.admit_recv_bytes(2999, 1));
        assert!(!l.admit_recv_bytes(2999, 2));
        assert!(l.admit_recv_bytes(3000, 0));
        assert!(!l.admit_recv_bytes(3001, 0));
        assert!(!l.admit_recv_bytes(usize::MAX, 1));
        assert!(l.admit_partial(3));
        assert!(!l.admit_partial(4));
        assert!(!l.admit_partial(5));
    }

    #[test]
    fn window() {
        let l = conn();
        assert!(l.in_window(100 + 255, 100));
        assert!(!l.in_window(100 + 256, 100));
        assert!(!l.in_window(100 + 257, 100));
        assert!(l.in_window(u64::MAX - 1, u64::MAX - 10));
    }

    #[test]
    fn fixed_caps() {
        assert!(ack_ranges_ok(63) && ack_ranges_ok(64) && !ack_ranges_ok(65));
        assert!(msg_ack_ranges_ok(63) && msg_ack_ranges_ok(64) && !msg_ack_ranges_ok(65));
        assert!(reason_len_ok(254) && reason_len_ok(255) && !reason_len_ok(256));
        assert!(cookie_len_ok(63) && cookie_len_ok(64) && !cookie_len_ok(65));
        assert!(admit_skipped_pn(15) && !admit_skipped_pn(16) && !admit_skipped_pn(17));
        let one = pooled_cost(100);
        assert_eq!(one, 100 + POOLED_BUFFER_COST);
        assert_eq!(pool_room_after(one, 100), Some(0));
        assert_eq!(pool_room_after(one - 1, 100), None);
        assert_eq!(pool_room_after(2 * one + 5, 100), Some(one + 5));
        assert_eq!(
            pool_room_after(1 << 20, 0),
            None,
            "an empty buffer is not worth keeping"
        );
        assert_eq!(pool_room_after(0, 1), None, "0 keeps nothing");
        assert_eq!(pooled_cost(usize::MAX), usize::MAX);
        assert_eq!(pool_room_after(usize::MAX, usize::MAX), Some(0));
    }

    #[test]
    fn endpoint_caps() {
        let mut l = EndpointLimits::new(
            &EndpointConfig::default()
                .max_connections(10)
                .max_handshakes_per_sec(1)
                .handshake_burst(2),
        );
        assert!(l.admit_connection(8, 1));
        assert!(!l.admit_connection(9, 1));
        assert!(!l.admit_connection(10, 1));
        #[allow(clippy::disallowed_methods)] // a base instant; its value is irrelevant
        let t0 = Instant::now();
        assert!(l.admit_handshake(t0));
        assert!(l.admit_handshake(t0));
        assert!(!l.admit_handshake(t0));
        assert!(l.admit_handshake(t0 + Duration::from_secs(1)));
        let q = MAX_QUEUED_HANDSHAKE_PACKETS;
        assert!(l.admit_handshake_packet(q - 1));
        assert!(!l.admit_handshake_packet(q));
        assert!(!l.admit_handshake_packet(q + 1));
        let q = MAX_QUEUED_REFUSED_EVENTS;
        assert!(l.admit_refused_event(q - 1));
        assert!(!l.admit_refused_event(q));
        assert!(!l.admit_refused_event(q + 1));
        let small = EndpointLimits::new(
            &EndpointConfig::default()
                .max_queued_handshake_packets(3)
                .max_queued_refused_events(0),
        );
        assert!(small.admit_handshake_packet(2));
        assert!(!small.admit_handshake_packet(3));
        assert!(!small.admit_refused_event(0));
        let r = MAX_RETRIES_FOLLOWED;
        assert!(EndpointLimits::admit_retry(r - 1));
        assert!(!EndpointLimits::admit_retry(r));
        assert!(!EndpointLimits::admit_retry(r + 1));
    }

    /// The README's table of fixed caps names every constant with its value.
    #[test]
    fn readme_lists_the_fixed_caps() {
        let readme = include_str!("../README.md");
        let caps: [(&str, u64); 15] = [
            ("MAX_ACK_RANGES", MAX_ACK_RANGES as u64),
            ("MAX_MSG_ACK_RANGES", MAX_MSG_ACK_RANGES as u64),
            ("MAX_REASON_LEN", MAX_REASON_LEN as u64),
            ("MAX_COOKIE_LEN", MAX_COOKIE_LEN as u64),
            ("RECEIVED_PN_RANGES", RECEIVED_PN_RANGES as u64),
            ("RECEIVED_PN_HISTORY", RECEIVED_PN_HISTORY),
            ("ACKED_PN_RANGES", ACKED_PN_RANGES as u64),
            ("MSG_ACKED_RANGES", MSG_ACKED_RANGES as u64),
            ("SKIPPED_PNS_KEPT", SKIPPED_PNS_KEPT as u64),
            ("POOLED_BUFFER_COST", POOLED_BUFFER_COST as u64),
            ("HELD_ENTRY_COST", HELD_ENTRY_COST as u64),
            ("QUEUED_EVENT_COST", QUEUED_EVENT_COST as u64),
            (
                "MAX_QUEUED_HANDSHAKE_PACKETS",
                MAX_QUEUED_HANDSHAKE_PACKETS as u64,
            ),
            (
                "MAX_QUEUED_REFUSED_EVENTS",
                MAX_QUEUED_REFUSED_EVENTS as u64,
            ),
            ("MAX_RETRIES_FOLLOWED", u64::from(MAX_RETRIES_FOLLOWED)),
        ];
        for (name, value) in caps {
            let row = format!("| `{name}` | {value} |");
            assert!(readme.contains(&row), "README lacks the row {row:?}");
        }
    }
}
