//! Public error types. Errors come from bad input or from limits; a panic is a bug.

use std::fmt;

use crate::wire::WireError;

/// Why [`Connection::send`](crate::Connection::send) did not accept a message. A message that
/// was not accepted has no outcome event: the caller still owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The message is larger than [`Config::max_message_size`](crate::Config::max_message_size).
    TooLarge {
        /// The message's size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The sender holds as many messages or bytes as its configured limits allow; retry after
    /// some outcomes have been reported.
    Backpressure,
    /// At-most-once messages cannot be ordered.
    OrderedAtMostOnce,
    /// The connection is closing or closed.
    Closed,
    /// The connection has used up its id space (2^62 messages).
    IdsExhausted,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::TooLarge { size, max } => {
                write!(
                    f,
                    "message of {size} bytes exceeds the maximum of {max} bytes"
                )
            }
            SendError::Backpressure => f.write_str("send buffer full (back-pressure)"),
            SendError::OrderedAtMostOnce => {
                f.write_str("at-most-once messages cannot be sent on an ordered channel")
            }
            SendError::Closed => f.write_str("connection is closing or closed"),
            SendError::IdsExhausted => f.write_str("message id space exhausted"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why an incoming datagram was dropped. Every drop is also counted in
/// [`Stats`](crate::Stats); the connection's state is unchanged by a dropped datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatagramError {
    /// The datagram could not be parsed or failed its integrity check.
    Malformed(WireError),
    /// The datagram names another connection.
    UnknownConnection,
    /// The packet number is older than anything this connection still tracks, or was seen.
    Stale,
    /// The connection is closed.
    Closed,
    /// The frames were well-formed but broke the protocol; the connection is now closed.
    ProtocolViolation(&'static str),
}

impl fmt::Display for DatagramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatagramError::Malformed(e) => write!(f, "malformed datagram: {e}"),
            DatagramError::UnknownConnection => f.write_str("datagram for another connection"),
            DatagramError::Stale => f.write_str("stale or duplicate packet"),
            DatagramError::Closed => f.write_str("connection closed"),
            DatagramError::ProtocolViolation(why) => write!(f, "protocol violation: {why}"),
        }
    }
}

impl std::error::Error for DatagramError {}

impl From<WireError> for DatagramError {
    fn from(e: WireError) -> Self {
        DatagramError::Malformed(e)
    }
}

/// Why [`Connection::ack`](crate::Connection::ack) or `reject` refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The token was issued by another connection.
    WrongConnection,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::WrongConnection => f.write_str("token belongs to another connection"),
        }
    }
}

impl std::error::Error for TokenError {}
