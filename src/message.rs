//! What a message is sent with: its guarantee, its channel and its per-message limits.

use std::fmt;
use std::time::Duration;

/// The delivery guarantee of one message, chosen when it is sent.
///
/// Exactly-once *delivery* is impossible over a network that can lose packets: a sender that
/// gets no acknowledgement cannot tell a lost message from a lost acknowledgement. What this
/// crate offers instead is exactly-once *processing*: retransmission plus deduplication at the
/// receiver, and an explicit [`Undeliverable`](crate::Event::Undeliverable) outcome when the
/// sender gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Guarantee {
    /// Sent once and never retransmitted. A loss is never hidden: the receiver counts the ids
    /// it can prove it never saw, and the sender reports the message Undeliverable.
    AtMostOnce = 0,
    /// Retransmitted until the receiver confirms it. The receiving application may see the
    /// message more than once (never out of order on an ordered channel).
    AtLeastOnce = 1,
    /// At-least-once plus deduplication at the receiver: the application sees the message at
    /// most once, and exactly once unless the sender reports it Undeliverable.
    ExactlyOnce = 2,
}

impl Guarantee {
    /// The two-bit wire code of this guarantee.
    pub fn to_bits(self) -> u8 {
        self as u8
    }

    /// Parses a two-bit wire code; `3` is not a guarantee.
    pub fn from_bits(bits: u8) -> Option<Guarantee> {
        match bits {
            0 => Some(Guarantee::AtMostOnce),
            1 => Some(Guarantee::AtLeastOnce),
            2 => Some(Guarantee::ExactlyOnce),
            _ => None,
        }
    }

    /// Whether the message is retransmitted until confirmed.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Guarantee::AtMostOnce)
    }
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::AtMostOnce => "at-most-once",
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce => "exactly-once",
        })
    }
}

impl std::str::FromStr for Guarantee {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "at-most-once" => Ok(Guarantee::AtMostOnce),
            "at-least-once" => Ok(Guarantee::AtLeastOnce),
            "exactly-once" => Ok(Guarantee::ExactlyOnce),
            other => Err(format!(
                "unknown guarantee {other:?} (expected at-most-once, at-least-once or exactly-once)"
            )),
        }
    }
}

/// A channel: messages on one ordered channel are delivered in send order, with head-of-line
/// blocking only within that channel. There are 256 channels per connection.
pub type ChannelId = u8;

/// Options for one [`send`](crate::Connection::send).
///
/// ```
/// use std::time::Duration;
/// use surely::{Guarantee, SendOptions};
/// let opts = SendOptions::new(Guarantee::ExactlyOnce)
///     .channel(3)
///     .ordered(true)
///     .deadline(Duration::from_millis(250))
///     .max_retransmits(10);
/// assert_eq!(opts.channel, 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendOptions {
    /// The delivery guarantee.
    pub guarantee: Guarantee,
    /// The channel (0..=255).
    pub channel: ChannelId,
    /// Deliver in send order relative to other ordered messages of the same channel.
    /// Only reliable guarantees can be ordered.
    pub ordered: bool,
    /// Give up (Undeliverable, `DeadlinePassed`) if not confirmed within this time after
    /// `send`. `None` uses the connection's default.
    pub deadline: Option<Duration>,
    /// Give up (Undeliverable, `RetriesExhausted`) after this many retransmissions.
    /// `None` uses the connection's default.
    pub max_retransmits: Option<u32>,
}

impl SendOptions {
    /// Unordered, channel 0, connection defaults for deadline and retries.
    pub fn new(guarantee: Guarantee) -> Self {
        SendOptions {
            guarantee,
            channel: 0,
            ordered: false,
            deadline: None,
            max_retransmits: None,
        }
    }

    /// Sets the channel.
    pub fn channel(mut self, channel: ChannelId) -> Self {
        self.channel = channel;
        self
    }

    /// Sets whether the message is ordered within its channel.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Sets the per-message deadline.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the per-message retransmission budget.
    pub fn max_retransmits(mut self, n: u32) -> Self {
        self.max_retransmits = Some(n);
        self
    }
}

impl From<Guarantee> for SendOptions {
    fn from(g: Guarantee) -> Self {
        SendOptions::new(g)
    }
}
