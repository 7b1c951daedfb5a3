//! Counters of one connection, and the send-to-Delivered latency distribution.

use std::time::Duration;

use crate::histogram::LatencyHistogram;

/// Counters of one connection. Read with [`Connection::stats`](crate::Connection::stats).
/// New counters may be added in minor releases.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Bytes sent (whole datagrams).
    pub bytes_sent: u64,
    /// Datagrams received and accepted.
    pub packets_received: u64,
    /// Bytes received (whole datagrams, accepted or not).
    pub bytes_received: u64,
    /// Datagrams dropped: malformed or failing the integrity check.
    pub dropped_malformed: u64,
    /// Datagrams dropped: stale or duplicate packet numbers, or another connection's id.
    pub dropped_stale: u64,
    /// Message frames dropped for lack of room (window, buffer, reassembly slots); the sender
    /// retransmits them or reports them lost.
    pub dropped_no_room: u64,
    /// Messages accepted by `send`.
    pub messages_sent: u64,
    /// Messages handed to the application.
    pub messages_received: u64,
    /// Copies of exactly-once (and ordered) messages that were recognised and not delivered
    /// again.
    pub duplicates_suppressed: u64,
    /// Copies of at-least-once messages delivered again (allowed by that guarantee).
    pub duplicates_delivered: u64,
    /// Message fragments sent again (loss, probe or a receiver's REJECT).
    pub retransmissions: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Times persistent congestion was established (RFC 9002 section 7.6: ack-eliciting
    /// packets sent over more than three probe timeouts all lost): each time the congestion
    /// window fell to its minimum.
    pub persistent_congestion: u64,
    /// Loss probes (RFC 9002 PTO) fired.
    pub probes: u64,
    /// At-most-once messages of the peer proven lost (sum of [`Event::Lost`](crate::Event::Lost)).
    pub amo_gaps: u64,
    /// Messages reported Delivered.
    pub delivered: u64,
    /// Messages reported Undeliverable (dead letters).
    pub undeliverable: u64,
    /// Messages the application rejected (or whose token it dropped).
    pub rejected: u64,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Minimum round-trip time seen.
    pub min_rtt: Duration,
    /// Current congestion window in bytes.
    pub cwnd: u64,
    /// Send-to-Delivered latency of every Delivered message.
    pub latency: LatencyHistogram,
}
