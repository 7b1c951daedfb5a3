//! What the application is told: received messages, outcomes of sent messages, losses and
//! the end of the connection.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::message::{ChannelId, Guarantee};
use crate::seq::MessageId;

/// Something the application must know. Drained with
/// [`Connection::poll_event`](crate::Connection::poll_event).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A message from the peer.
    Message(Received),
    /// Outcome: the peer confirmed the message (handed to its application or, in
    /// acknowledge-after-processing mode, processed by it).
    Delivered {
        /// The id `send` returned.
        id: MessageId,
        /// The guarantee it was sent with.
        guarantee: Guarantee,
    },
    /// Outcome: the sender gave up on the message (a dead letter).
    ///
    /// This means the peer did **not confirm** it. The peer may or may not have processed it:
    /// a lost acknowledgement and a lost message look the same from here (the two-generals
    /// problem). For an exactly-once message the peer will never process it a second time, and,
    /// if it has not processed it yet, never will: the receiver is told to stop waiting for it.
    Undeliverable {
        /// The id `send` returned.
        id: MessageId,
        /// The guarantee it was sent with.
        guarantee: Guarantee,
        /// Why the sender gave up.
        reason: UndeliverableReason,
        /// The payload, handed back so the application can log, persist or resend it.
        payload: Vec<u8>,
    },
    /// The receiver proved that this many at-most-once messages from the peer were lost
    /// (their ids were passed over and will never be sent again).
    Lost {
        /// Number of messages.
        count: u64,
    },
    /// The connection closed; no further events follow except outcomes already queued.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why a message ended Undeliverable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UndeliverableReason {
    /// The retransmission budget was spent.
    RetriesExhausted,
    /// The message's deadline passed.
    DeadlinePassed,
    /// At-most-once: a packet carrying it was lost, and it is never retransmitted.
    Lost,
    /// The connection closed (by either side) before the peer confirmed it.
    ConnectionClosed,
    /// The peer went silent for the idle timeout.
    ConnectionLost,
}

impl fmt::Display for UndeliverableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UndeliverableReason::RetriesExhausted => "retries exhausted",
            UndeliverableReason::DeadlinePassed => "deadline passed",
            UndeliverableReason::Lost => "lost (at-most-once)",
            UndeliverableReason::ConnectionClosed => "connection closed",
            UndeliverableReason::ConnectionLost => "connection lost",
        })
    }
}

/// Why a connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side called [`Connection::close`](crate::Connection::close).
    Local,
    /// The peer closed, with its code and reason.
    Peer {
        /// The peer's close code (0 = graceful).
        code: u64,
        /// The peer's reason text.
        reason: String,
    },
    /// Nothing was heard from the peer for the idle timeout.
    IdleTimeout,
    /// The peer broke the protocol.
    ProtocolViolation(&'static str),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Peer { code, reason } => write!(f, "closed by peer ({code}): {reason}"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::ProtocolViolation(why) => write!(f, "protocol violation: {why}"),
        }
    }
}

/// A message received from the peer.
#[derive(Debug)]
pub struct Received {
    /// Its id in the peer's id space for its guarantee.
    pub id: MessageId,
    /// The channel it was sent on.
    pub channel: ChannelId,
    /// The guarantee it was sent with.
    pub guarantee: Guarantee,
    /// Whether it was delivered in channel order.
    pub ordered: bool,
    /// The bytes, exactly as sent.
    pub payload: Vec<u8>,
    /// In acknowledge-after-processing mode, the token to pass to
    /// [`Connection::ack`](crate::Connection::ack) once the message's side effects are done
    /// (or to `reject`). `None` for at-most-once messages and in acknowledge-on-receipt mode.
    pub token: Option<AckToken>,
}

/// Proof that the application holds an unacknowledged reliable message.
///
/// Pass it to [`Connection::ack`](crate::Connection::ack) when processing is done, or to
/// [`Connection::reject`](crate::Connection::reject) to have the peer send the message again.
/// Dropping it counts as a rejection.
#[must_use = "a dropped token rejects the message"]
pub struct AckToken {
    pub(crate) id: u64,
    pub(crate) sink: Option<Arc<TokenSink>>,
}

impl AckToken {
    /// The id of the message this token acknowledges.
    pub fn id(&self) -> MessageId {
        MessageId(self.id)
    }

    /// Consumes the token without the drop-rejection; returns its id and sink.
    pub(crate) fn take(mut self) -> (u64, Option<Arc<TokenSink>>) {
        (self.id, self.sink.take())
    }
}

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AckToken({})", self.id)
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.dropped(self.id);
        }
    }
}

/// Where dropped tokens are reported; drained by the connection on every call.
#[derive(Debug, Default)]
pub(crate) struct TokenSink {
    dropped: Mutex<Vec<u64>>,
}

impl TokenSink {
    fn dropped(&self, id: u64) {
        // A poisoned lock only means another thread panicked while pushing; the Vec is intact.
        let mut v = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        v.push(id);
    }

    /// Moves the dropped ids into `out`.
    pub(crate) fn drain_into(&self, out: &mut Vec<u64>) {
        let mut v = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        out.append(&mut v);
    }
}
