//! Connection configuration: a plain struct with defaults, chainable setters, and one
//! validation pass.
//!
//! Every buffer, window, table and retry in a connection is bounded by a field here. The
//! defaults suit latency-sensitive programs on a LAN or a decent internet path.

use std::fmt;
use std::time::Duration;

use crate::congestion::CongestionControl;
use crate::wire;

/// The smallest receive window every implementation must support. A sender may use this many
/// reliable ids before it has heard the receiver's own advertisement.
pub const MIN_WINDOW: u64 = 256;

/// When the receiver acknowledges a reliable message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AckMode {
    /// A message counts as complete when it is handed to the application
    /// (queued as [`Event::Message`](crate::Event::Message)). The fast path.
    #[default]
    OnReceipt,
    /// A reliable message carries an [`AckToken`](crate::AckToken); it counts as complete only
    /// when the application calls [`Connection::ack`](crate::Connection::ack). A rejected or
    /// dropped token makes the sender send the message again.
    AfterProcessing,
}

impl std::str::FromStr for AckMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on-receipt" => Ok(AckMode::OnReceipt),
            "after-processing" => Ok(AckMode::AfterProcessing),
            other => Err(format!(
                "unknown ack mode {other:?} (expected on-receipt or after-processing)"
            )),
        }
    }
}

/// Configuration of one connection (both of its directions).
///
/// ```
/// use std::time::Duration;
/// use surely::{AckMode, Config};
/// let config = Config::default()
///     .max_datagram_size(1400)
///     .ack_mode(AckMode::AfterProcessing)
///     .default_deadline(Some(Duration::from_secs(2)))
///     .rng_seed(42);
/// config.validate().unwrap();
/// assert_eq!(config.max_datagram_size, 1400);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Largest datagram sent, in bytes (header and tag included). Default 1200, range
    /// 256..=65507.
    pub max_datagram_size: usize,
    /// Largest message `send` accepts, in bytes. Default 1 MiB.
    pub max_message_size: usize,
    /// Most fragments one message may be cut into (receiver cap). Default 1024.
    pub max_fragments: u32,
    /// Receive window for reliable messages: how many ids beyond the cumulative point the
    /// receiver tracks (also the dedup window). Default 4096, at least [`MIN_WINDOW`].
    pub window: u64,
    /// Dedup window for at-most-once messages. Default 4096, at least 64.
    pub amo_window: u64,
    /// Messages accepted by `send` whose outcome is not yet known. Past this, `send` returns
    /// [`SendError::Backpressure`](crate::SendError::Backpressure). Default 16384.
    pub max_pending_messages: usize,
    /// Payload bytes held by the sender (queued or awaiting confirmation). Default 8 MiB.
    pub send_buffer_bytes: usize,
    /// Payload bytes held by the receiver (reassembly, ordered hold-back, undelivered events).
    /// Default 8 MiB.
    pub recv_buffer_bytes: usize,
    /// Partial messages under reassembly at once. Default 64.
    pub max_partial_messages: usize,
    /// Emptied payload buffers a connection keeps for reuse (those `recycle` gives back and
    /// those of confirmed messages), in bytes: their capacities plus
    /// [`POOLED_BUFFER_COST`](crate::connection::POOLED_BUFFER_COST) each. Past it, a buffer
    /// is freed. A pool that covers the messages in flight at once (sent and not yet
    /// confirmed, received and not yet recycled) makes steady traffic allocate nothing. The
    /// pool is empty until used. Default 1 MiB; 0 keeps no buffer.
    pub pool_bytes: usize,
    /// Most ranges in one ACK frame this end sends (the highest ones; a peer accepts at most
    /// [`MAX_ACK_RANGES`](crate::wire::MAX_ACK_RANGES)). Default 64, range 1..=64.
    pub max_ack_ranges: usize,
    /// Most ranges in one MSG_ACK frame this end sends (the lowest ones; a peer accepts at
    /// most [`MAX_MSG_ACK_RANGES`](crate::wire::MAX_MSG_ACK_RANGES)). Default 64, range
    /// 1..=64.
    pub max_msg_ack_ranges: usize,
    /// Received packet-number ranges remembered for acknowledgements and duplicate detection;
    /// past it the lowest range is forgotten. Default 256, range `max_ack_ranges..=65536`.
    pub ack_ranges_tracked: usize,
    /// A partial message with no new fragment for this long is discarded. Default 10 s.
    pub reassembly_timeout: Duration,
    /// RTT assumed before the first sample. Default 100 ms.
    pub initial_rtt: Duration,
    /// Lower bound of the retransmission timeout (RFC 6298 RTO / RFC 9002 PTO). Default 1 ms,
    /// the timer granularity: the probe timeout is then RFC 9002's
    /// `SRTT + max(4 * RTTVAR, granularity) + max_ack_delay`. A higher floor makes every lost
    /// acknowledgement at the end of a flight wait for it (10 ms cost about a third of the
    /// goodput at 5% loss on a 50 us path).
    pub min_rto: Duration,
    /// Upper bound of the backed-off retransmission timeout. Default 2 s.
    pub max_rto: Duration,
    /// Longest the receiver delays an acknowledgement. Default 1 ms.
    pub max_ack_delay: Duration,
    /// Acknowledge at once after this many ack-eliciting packets. Default 2.
    pub ack_eliciting_threshold: u32,
    /// Packet reordering threshold for loss detection (RFC 9002 section 6.1.1). Default 3.
    pub packet_threshold: u64,
    /// Timer granularity (RFC 9002). Default 1 ms.
    pub timer_granularity: Duration,
    /// Retransmissions of any one fragment before a message is given up (Undeliverable,
    /// `RetriesExhausted`). Default 32. Overridable per message.
    pub default_max_retransmits: u32,
    /// Time after `send` when an unconfirmed message is given up (Undeliverable,
    /// `DeadlinePassed`). Default `None`: no deadline. Overridable per message.
    pub default_deadline: Option<Duration>,
    /// The connection closes (all pending messages Undeliverable) after this long without
    /// a datagram from the peer. Default 10 s.
    pub idle_timeout: Duration,
    /// Send a PING after this long without sending anything. Default 1 s; `None` disables.
    pub keepalive_interval: Option<Duration>,
    /// A graceful close waits at most this long for pending messages to reach an outcome.
    /// Default 5 s.
    pub drain_timeout: Duration,
    /// When the receiver acknowledges reliable messages.
    pub ack_mode: AckMode,
    /// Congestion controller. Default NewReno.
    pub congestion: CongestionControl,
    /// Seed of the connection's random generator (deterministic runs).
    pub rng_seed: u64,
    /// First packet number used (both directions). Default 0; tests use values near wrap
    /// points.
    pub initial_packet_number: u64,
    /// First message id of both spaces (both directions, both ends must agree). Default 0.
    pub initial_message_id: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_datagram_size: 1200,
            max_message_size: 1 << 20,
            max_fragments: 1024,
            window: 4096,
            amo_window: 4096,
            max_pending_messages: 16_384,
            send_buffer_bytes: 8 << 20,
            recv_buffer_bytes: 8 << 20,
            max_partial_messages: 64,
            pool_bytes: 1 << 20,
            max_ack_ranges: crate::limits::MAX_ACK_RANGES,
            max_msg_ack_ranges: crate::limits::MAX_MSG_ACK_RANGES,
            ack_ranges_tracked: crate::limits::RECEIVED_PN_RANGES,
            reassembly_timeout: Duration::from_secs(10),
            initial_rtt: Duration::from_millis(100),
            min_rto: Duration::from_millis(1),
            max_rto: Duration::from_secs(2),
            max_ack_delay: Duration::from_millis(1),
            ack_eliciting_threshold: 2,
            packet_threshold: 3,
            timer_granularity: Duration::from_millis(1),
            default_max_retransmits: 32,
            default_deadline: None,
            idle_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(1)),
            drain_timeout: Duration::from_secs(5),
            ack_mode: AckMode::OnReceipt,
            congestion: CongestionControl::NewReno,
            rng_seed: 0,
            initial_packet_number: 0,
            initial_message_id: 0,
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $t:ty;)*) => {
        $(
            $(#[$m])*
            pub fn $name(mut self, value: $t) -> Self {
                self.$name = value;
                self
            }
        )*
    };
}

impl Config {
    setters! {
        /// Sets [`Config::max_datagram_size`].
        max_datagram_size: usize;
        /// Sets [`Config::max_message_size`].
        max_message_size: usize;
        /// Sets [`Config::max_fragments`].
        max_fragments: u32;
        /// Sets [`Config::window`].
        window: u64;
        /// Sets [`Config::amo_window`].
        amo_window: u64;
        /// Sets [`Config::max_pending_messages`].
        max_pending_messages: usize;
        /// Sets [`Config::send_buffer_bytes`].
        send_buffer_bytes: usize;
        /// Sets [`Config::recv_buffer_bytes`].
        recv_buffer_bytes: usize;
        /// Sets [`Config::max_partial_messages`].
        max_partial_messages: usize;
        /// Sets [`Config::pool_bytes`].
        pool_bytes: usize;
        /// Sets [`Config::max_ack_ranges`].
        max_ack_ranges: usize;
        /// Sets [`Config::max_msg_ack_ranges`].
        max_msg_ack_ranges: usize;
        /// Sets [`Config::ack_ranges_tracked`].
        ack_ranges_tracked: usize;
        /// Sets [`Config::reassembly_timeout`].
        reassembly_timeout: Duration;
        /// Sets [`Config::initial_rtt`].
        initial_rtt: Duration;
        /// Sets [`Config::min_rto`].
        min_rto: Duration;
        /// Sets [`Config::max_rto`].
        max_rto: Duration;
        /// Sets [`Config::max_ack_delay`].
        max_ack_delay: Duration;
        /// Sets [`Config::ack_eliciting_threshold`].
        ack_eliciting_threshold: u32;
        /// Sets [`Config::packet_threshold`].
        packet_threshold: u64;
        /// Sets [`Config::timer_granularity`].
        timer_granularity: Duration;
        /// Sets [`Config::default_max_retransmits`].
        default_max_retransmits: u32;
        /// Sets [`Config::default_deadline`].
        default_deadline: Option<Duration>;
        /// Sets [`Config::idle_timeout`].
        idle_timeout: Duration;
        /// Sets [`Config::keepalive_interval`].
        keepalive_interval: Option<Duration>;
        /// Sets [`Config::drain_timeout`].
        drain_timeout: Duration;
        /// Sets [`Config::ack_mode`].
        ack_mode: AckMode;
        /// Sets [`Config::congestion`].
        congestion: CongestionControl;
        /// Sets [`Config::rng_seed`].
        rng_seed: u64;
        /// Sets [`Config::initial_packet_number`].
        initial_packet_number: u64;
        /// Sets [`Config::initial_message_id`].
        initial_message_id: u64;
    }

    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, why: &'static str| Err(ConfigError { field, why });
        if !(256..=wire::MAX_DATAGRAM).contains(&self.max_datagram_size) {
            return bad("max_datagram_size", "must be within 256..=65507");
        }
        if self.max_fragments < 2 {
            return bad("max_fragments", "must be at least 2");
        }
        let chunk = crate::connection::fragment_chunk(self.max_datagram_size) as u64;
        if self.max_message_size as u64 > chunk * u64::from(self.max_fragments) {
            return bad(
                "max_message_size",
                "exceeds max_fragments times the fragment size of max_datagram_size",
            );
        }
        if self.max_message_size > self.send_buffer_bytes {
            return bad("max_message_size", "must not exceed send_buffer_bytes");
        }
        if crate::limits::largest_message_cost(self.max_message_size, self.max_fragments)
            > self.recv_buffer_bytes
        {
            return bad(
                "recv_buffer_bytes",
                "must hold the largest message: max_message_size + max_fragments + 64",
            );
        }
        if !(MIN_WINDOW..=1 << 24).contains(&self.window) {
            return bad("window", "must be within 256..=16777216");
        }
        if !(64..=1 << 24).contains(&self.amo_window) {
            return bad("amo_window", "must be within 64..=16777216");
        }
        if self.max_pending_messages == 0 {
            return bad("max_pending_messages", "must be at least 1");
        }
        if !(1..=crate::limits::MAX_ACK_RANGES).contains(&self.max_ack_ranges) {
            return bad("max_ack_ranges", "must be within 1..=64");
        }
        if !(1..=crate::limits::MAX_MSG_ACK_RANGES).contains(&self.max_msg_ack_ranges) {
            return bad("max_msg_ack_ranges", "must be within 1..=64");
        }
        if !(self.max_ack_ranges..=65_536).contains(&self.ack_ranges_tracked) {
            return bad(
                "ack_ranges_tracked",
                "must be within max_ack_ranges..=65536",
            );
        }
        if self.max_partial_messages == 0 {
            return bad("max_partial_messages", "must be at least 1");
        }
        if self.min_rto.is_zero() || self.min_rto > self.max_rto {
            return bad("min_rto", "must be non-zero and at most max_rto");
        }
        if self.initial_rtt.is_zero() {
            return bad("initial_rtt", "must be non-zero");
        }
        if self.timer_granularity.is_zero() {
            return bad("timer_granularity", "must be non-zero");
        }
        if self.ack_eliciting_threshold == 0 {
            return bad("ack_eliciting_threshold", "must be at least 1");
        }
        if self.packet_threshold < 1 {
            return bad("packet_threshold", "must be at least 1");
        }
        if self.idle_timeout.is_zero() {
            return bad("idle_timeout", "must be non-zero");
        }
        if let Some(k) = self.keepalive_interval {
            if k.is_zero() || k >= self.idle_timeout {
                return bad(
                    "keepalive_interval",
                    "must be non-zero and below idle_timeout",
                );
            }
        }
        let room = crate::seq::MAX_SEQ - (1 << 32);
        if self.initial_packet_number > room || self.initial_message_id > room {
            return bad(
                "initial_message_id",
                "initial ids must leave 2^32 values below 2^62",
            );
        }
        Ok(())
    }
}

/// A configuration field out of its allowed range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config: {} {}", self.field, self.why)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn rejects_out_of_range_fields() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config::default().max_datagram_size(100),
                "max_datagram_size",
            ),
            (
                Config::default().max_datagram_size(70_000),
                "max_datagram_size",
            ),
            (Config::default().window(10), "window"),
            (Config::default().amo_window(1), "amo_window"),
            (Config::default().max_fragments(1), "max_fragments"),
            (
                Config::default().max_message_size(1 << 30),
                "max_message_size",
            ),
            (Config::default().min_rto(Duration::ZERO), "min_rto"),
            (
                Config::default().keepalive_interval(Some(Duration::from_secs(60))),
                "keepalive_interval",
            ),
            (
                Config::default().max_pending_messages(0),
                "max_pending_messages",
            ),
            (
                Config::default().initial_message_id(1 << 62),
                "initial_message_id",
            ),
            (Config::default().max_ack_ranges(0), "max_ack_ranges"),
            (Config::default().max_ack_ranges(65), "max_ack_ranges"),
            (
                Config::default().max_msg_ack_ranges(65),
                "max_msg_ack_ranges",
            ),
            (
                Config::default().ack_ranges_tracked(63),
                "ack_ranges_tracked",
            ),
            (
                Config::default().ack_ranges_tracked(65_537),
                "ack_ranges_tracked",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn receive_buffer_must_hold_the_largest_message_with_its_fragment_map_and_event() {
        let base = Config::default().max_message_size(4000).max_fragments(4);
        let need = 4000 + 4 + 64;
        base.clone().recv_buffer_bytes(need).validate().unwrap();
        base.clone().recv_buffer_bytes(need + 1).validate().unwrap();
        let err = base
            .clone()
            .recv_buffer_bytes(need - 1)
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "recv_buffer_bytes");
        // Equal to the message size alone is not enough: the message's event costs too.
        let err = base.recv_buffer_bytes(4000).validate().unwrap_err();
        assert_eq!(err.field, "recv_buffer_bytes");
    }
}
