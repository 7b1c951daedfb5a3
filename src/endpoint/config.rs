//! [`EndpointConfig`]: the limits of an endpoint, with defaults and chainable setters.

use std::time::Duration;

use crate::config::{Config, ConfigError};

/// Configuration of an [`Endpoint`](super::Endpoint): its limits, its handshake timing, and
/// the [`Config`] of every connection it makes.
///
/// ```
/// use std::time::Duration;
/// use surely::endpoint::EndpointConfig;
/// use surely::Config;
///
/// let config = EndpointConfig::default()
///     .max_connections(100)
///     .max_handshakes_per_sec(50)
///     .handshake_burst(20)
///     .cookie_lifetime(Duration::from_secs(5))
///     .secret_rotation_period(Duration::from_secs(30))
///     .handshake_timeout(Duration::from_millis(100))
///     .handshake_retries(3)
///     .accept_incoming(false)
///     .rng_seed(7)
///     .transport(Config::default().max_datagram_size(1400));
/// config.validate().unwrap();
/// assert_eq!(config.max_connections, 100);
/// assert!(EndpointConfig::default().max_connections(0).validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
    /// Most connections at once, those still in their handshake (outgoing) included. A server
    /// at the limit answers REFUSE (server full); `connect` fails. Default 1024, range
    /// 1..=1_000_000.
    pub max_connections: usize,
    /// Handshakes the endpoint starts per second (RETRY or REFUSE sent to an address not yet
    /// validated), averaged; INITIALs beyond the rate are dropped without an answer. Default
    /// 1000, at least 1.
    pub max_handshakes_per_sec: u32,
    /// Handshakes that may start at once (the token bucket's size). Default 256, at least 1.
    pub handshake_burst: u32,
    /// How long a RETRY cookie stays valid (rounded up to whole seconds; an echo may be up to
    /// one second later). Default 10 s, range 1 s..=1 day, at most `secret_rotation_period`.
    pub cookie_lifetime: Duration,
    /// How often the cookie secret changes. The application should call
    /// [`Endpoint::rotate_secret`](super::Endpoint::rotate_secret) with fresh entropy at this
    /// period; if it does not, the endpoint derives the next secret from the current one. A
    /// replaced secret stays valid one more period. Default 60 s, range 1 s..=1 day.
    pub secret_rotation_period: Duration,
    /// How long a client waits for an answer before it sends its INITIAL again; doubled after
    /// every timeout. Default 250 ms.
    pub handshake_timeout: Duration,
    /// INITIALs a client sends again after timeouts before it gives up (ConnectFailed,
    /// timed out). With the defaults it gives up after `250 ms * (2^5 - 1)` = 7.75 s.
    /// Default 4, at most 16.
    pub handshake_retries: u32,
    /// Whether the endpoint accepts incoming connections (a server). If not, an INITIAL gets
    /// REFUSE (not accepting). Default true.
    pub accept_incoming: bool,
    /// Handshake packets (RETRY, ACCEPT, REFUSE, INITIAL) waiting for `poll_transmit`; past it
    /// new ones are dropped and counted. Default
    /// [`MAX_QUEUED_HANDSHAKE_PACKETS`](super::MAX_QUEUED_HANDSHAKE_PACKETS) (1024), range
    /// 1..=1_000_000.
    pub max_queued_handshake_packets: usize,
    /// [`Refused`](super::EndpointEvent::Refused) events waiting for `poll_event`; past it
    /// they are only counted. Default
    /// [`MAX_QUEUED_REFUSED_EVENTS`](super::MAX_QUEUED_REFUSED_EVENTS) (1024), range
    /// 0..=1_000_000.
    pub max_queued_refused_events: usize,
    /// Seed of the endpoint's random generator (connection ids are drawn from it, keyed with
    /// the secret). Default 0.
    pub rng_seed: u64,
    /// Configuration of every connection. Both ends must agree on `initial_packet_number` and
    /// `initial_message_id` (the handshake checks); each uses the smaller `max_datagram_size`.
    pub transport: Config,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_connections: 1024,
            max_handshakes_per_sec: 1000,
            handshake_burst: 256,
            cookie_lifetime: Duration::from_secs(10),
            secret_rotation_period: Duration::from_secs(60),
            handshake_timeout: Duration::from_millis(250),
            handshake_retries: 4,
            accept_incoming: true,
            max_queued_handshake_packets: crate::limits::MAX_QUEUED_HANDSHAKE_PACKETS,
            max_queued_refused_events: crate::limits::MAX_QUEUED_REFUSED_EVENTS,
            rng_seed: 0,
            transport: Config::default(),
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

/// One day: the longest cookie lifetime and rotation period.
const DAY: Duration = Duration::from_secs(86_400);

impl EndpointConfig {
    setters! {
        /// Sets [`EndpointConfig::max_connections`].
        max_connections: usize;
        /// Sets [`EndpointConfig::max_handshakes_per_sec`].
        max_handshakes_per_sec: u32;
        /// Sets [`EndpointConfig::handshake_burst`].
        handshake_burst: u32;
        /// Sets [`EndpointConfig::cookie_lifetime`].
        cookie_lifetime: Duration;
        /// Sets [`EndpointConfig::secret_rotation_period`].
        secret_rotation_period: Duration;
        /// Sets [`EndpointConfig::handshake_timeout`].
        handshake_timeout: Duration;
        /// Sets [`EndpointConfig::handshake_retries`].
        handshake_retries: u32;
        /// Sets [`EndpointConfig::accept_incoming`].
        accept_incoming: bool;
        /// Sets [`EndpointConfig::max_queued_handshake_packets`].
        max_queued_handshake_packets: usize;
        /// Sets [`EndpointConfig::max_queued_refused_events`].
        max_queued_refused_events: usize;
        /// Sets [`EndpointConfig::rng_seed`].
        rng_seed: u64;
        /// Sets [`EndpointConfig::transport`].
        transport: Config;
    }

    /// Checks every field (and the transport configuration) against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, why: &'static str| Err(ConfigError { field, why });
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad("max_connections", "must be within 1..=1000000");
        }
        if self.max_handshakes_per_sec == 0 {
            return bad("max_handshakes_per_sec", "must be at least 1");
        }
        if self.handshake_burst == 0 {
            return bad("handshake_burst", "must be at least 1");
        }
        let second = Duration::from_secs(1);
        if !(second..=DAY).contains(&self.secret_rotation_period) {
            return bad("secret_rotation_period", "must be within 1 s..=1 day");
        }
        if self.cookie_lifetime < second || self.cookie_lifetime > self.secret_rotation_period {
            return bad(
                "cookie_lifetime",
                "must be at least 1 s and at most secret_rotation_period",
            );
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > DAY {
            return bad("handshake_timeout", "must be within 0..=1 day, not zero");
        }
        if self.handshake_retries > 16 {
            return bad("handshake_retries", "must be at most 16");
        }
        if !(1..=1_000_000).contains(&self.max_queued_handshake_packets) {
            return bad("max_queued_handshake_packets", "must be within 1..=1000000");
        }
        if self.max_queued_refused_events > 1_000_000 {
            return bad("max_queued_refused_events", "must be at most 1000000");
        }
        self.transport.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        EndpointConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_out_of_range_fields() {
        let d = EndpointConfig::default;
        let cases: Vec<(EndpointConfig, &str)> = vec![
            (d().max_connections(0), "max_connections"),
            (d().max_handshakes_per_sec(0), "max_handshakes_per_sec"),
            (d().handshake_burst(0), "handshake_burst"),
            (d().cookie_lifetime(Duration::ZERO), "cookie_lifetime"),
            (
                d().cookie_lifetime(Duration::from_secs(61)),
                "cookie_lifetime",
            ),
            (
                d().secret_rotation_period(Duration::ZERO),
                "secret_rotation_period",
            ),
            (d().handshake_timeout(Duration::ZERO), "handshake_timeout"),
            (d().handshake_retries(17), "handshake_retries"),
            (
                d().max_queued_handshake_packets(0),
                "max_queued_handshake_packets",
            ),
            (
                d().max_queued_refused_events(1_000_001),
                "max_queued_refused_events",
            ),
            (d().transport(Config::default().window(1)), "window"),
        ];
        for (config, field) in cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
    }
}
