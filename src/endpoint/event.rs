//! What an endpoint reports: handles, events, errors and counters.

use std::fmt;
use std::net::SocketAddr;

use crate::event::{CloseReason, Event};
use crate::wire::RefuseReason;

#[cfg(doc)]
use super::{Endpoint, EndpointConfig, MAX_QUEUED_HANDSHAKE_PACKETS, MAX_QUEUED_REFUSED_EVENTS};

/// Names one connection of an endpoint (or an outgoing handshake in progress). A handle whose
/// connection was freed is stale: the endpoint answers `None` for it, even if its slot is
/// reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle {
    pub(super) index: u32,
    pub(super) generation: u32,
}

impl fmt::Display for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.index, self.generation)
    }
}

/// Why [`Endpoint::connect`] did not start a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint has [`max_connections`](EndpointConfig::max_connections) connections.
    TooManyConnections,
    /// No unused connection id was found (practically impossible with 64-bit ids).
    NoConnectionId,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::TooManyConnections => f.write_str("too many connections"),
            ConnectError::NoConnectionId => f.write_str("no free connection id"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Why an outgoing handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailReason {
    /// No answer after every retransmission.
    TimedOut,
    /// The server refused, for this reason.
    Refused(RefuseReason),
    /// The server's ACCEPT announced settings this side cannot use.
    Incompatible,
}

impl fmt::Display for ConnectFailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailReason::TimedOut => f.write_str("handshake timed out"),
            ConnectFailReason::Refused(r) => write!(f, "refused by the server: {r}"),
            ConnectFailReason::Incompatible => f.write_str("incompatible server settings"),
        }
    }
}

/// What the application is told by an [`Endpoint`].
#[derive(Debug)]
#[non_exhaustive]
pub enum EndpointEvent {
    /// Server side: a handshake completed; the connection is usable.
    NewConnection {
        /// The new connection.
        handle: ConnectionHandle,
        /// The peer's address.
        remote: SocketAddr,
    },
    /// Client side: the connection opened with [`Endpoint::connect`] is established.
    Connected {
        /// The handle `connect` returned.
        handle: ConnectionHandle,
    },
    /// Client side: the handshake failed; the handle is now stale.
    ConnectFailed {
        /// The handle `connect` returned.
        handle: ConnectionHandle,
        /// Why.
        reason: ConnectFailReason,
    },
    /// Server side: this endpoint refused a handshake (also counted).
    Refused {
        /// The address the INITIAL came from (not validated: it may be spoofed).
        remote: SocketAddr,
        /// The reason sent in the REFUSE.
        reason: RefuseReason,
    },
    /// A connection reached `Closed` and its events were all taken; its slot is free and the
    /// handle is now stale.
    ConnectionClosed {
        /// The connection.
        handle: ConnectionHandle,
        /// Why it closed (as in its [`Event::Closed`]).
        reason: CloseReason,
    },
    /// An event of one connection, in the order the connection produced them.
    Connection {
        /// The connection.
        handle: ConnectionHandle,
        /// The event.
        event: Event,
    },
}

/// Counters of an endpoint. Read with [`Endpoint::stats`].
/// New counters may be added in minor releases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Datagrams returned by `poll_transmit`.
    pub datagrams_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Datagrams dropped: malformed, failing the integrity check, or an INITIAL under 1200
    /// bytes.
    pub dropped_malformed: u64,
    /// DATA datagrams naming no connection (or one still in its handshake), or handshake
    /// answers naming no handshake.
    pub dropped_unknown_cid: u64,
    /// DATA datagrams naming a connection but coming from another address than its peer's.
    pub dropped_wrong_address: u64,
    /// INITIALs left unanswered because the handshake rate limit was reached.
    pub dropped_rate_limited: u64,
    /// Handshake answers dropped because [`MAX_QUEUED_HANDSHAKE_PACKETS`] were waiting.
    pub dropped_queue_full: u64,
    /// Answers to unvalidated addresses dropped because they would have been larger than the
    /// datagram that caused them (never happens with this version's packet sizes).
    pub dropped_amplification: u64,
    /// Handshake packets that arrived for a handshake in another state (duplicate ACCEPT,
    /// excess RETRY): ignored.
    pub handshake_packets_ignored: u64,
    /// Handshakes started: `connect` calls, and RETRYs sent by a server.
    pub handshakes_started: u64,
    /// Handshakes completed: connections established on either side.
    pub handshakes_completed: u64,
    /// REFUSEs sent.
    pub handshakes_refused: u64,
    /// Outgoing handshakes that failed (timed out, refused, incompatible).
    pub handshakes_failed: u64,
    /// Cookies that did not verify: wrong address or id, expired, forged, or made under a
    /// retired secret.
    pub cookies_rejected: u64,
    /// Bytes of INITIALs from addresses not validated yet.
    pub bytes_received_unvalidated: u64,
    /// Bytes sent to addresses not validated yet (RETRY, REFUSE). Each answer is at most the
    /// size of the INITIAL it answers, so this never exceeds `bytes_received_unvalidated`.
    pub bytes_sent_unvalidated: u64,
    /// Connections freed after reaching `Closed`.
    pub connections_closed: u64,
    /// Refused events not queued because [`MAX_QUEUED_REFUSED_EVENTS`] were waiting.
    pub events_dropped: u64,
}
