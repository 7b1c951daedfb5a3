//! Two connections joined by a simulated [`Network`], driven over virtual time.

use std::sync::Arc;
use std::time::Instant;

use super::network::{Network, NodeId};
use crate::config::{Config, ConfigError};
use crate::connection::Connection;

/// Node id of [`Pair::a`] in the network.
pub const NODE_A: NodeId = 0;
/// Node id of [`Pair::b`] in the network.
pub const NODE_B: NodeId = 1;

/// Most datagrams one connection may emit in one [`Pair::step`]; a guard against a
/// connection that would never stop sending (which would be a bug).
const MAX_BURST: usize = 100_000;

/// Two connections (`a` on node 0, `b` on node 1) and the network between them, on virtual
/// time that starts at the instant given to [`Pair::new`].
///
/// Each [`step`](Pair::step) lets both connections transmit, then jumps virtual time to the
/// earliest deadline (a delivery or a connection timer), delivers what is due and fires
/// expired timers. Events are left in the connections for the caller to poll.
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, Instant};
/// use surely::sim::{LinkConfig, Pair};
/// use surely::{Config, Event, Guarantee};
///
/// # #[allow(clippy::disallowed_methods)]
/// let start = Instant::now(); // origin of virtual time
/// let config = Arc::new(Config::default());
/// let mut pair = Pair::new(config.clone(), config, 42, start).unwrap();
/// pair.net.set_links(0, 1, LinkConfig::perfect(Duration::from_millis(5)).loss(0.2));
/// let id = pair.a.send(pair.now, b"ping", Guarantee::ExactlyOnce).unwrap();
/// let mut delivered = false;
/// while !delivered && pair.step(start + Duration::from_secs(10)) {
///     while let Some(ev) = pair.a.poll_event() {
///         delivered |= matches!(ev, Event::Delivered { id: d, .. } if d == id);
///     }
///     while pair.b.poll_event().is_some() {}
/// }
/// assert!(delivered);
/// ```
#[derive(Debug)]
pub struct Pair {
    /// The network between the two.
    pub net: Network,
    /// Node 0.
    pub a: Connection,
    /// Node 1.
    pub b: Connection,
    /// Current virtual time.
    pub now: Instant,
    buf: Vec<u8>,
}

impl Pair {
    /// Two connected connections (connection ids 1 and 2) on a perfect network seeded with
    /// `seed`; configure `net` for impairments.
    pub fn new(
        config_a: Arc<Config>,
        config_b: Arc<Config>,
        seed: u64,
        start: Instant,
    ) -> Result<Pair, ConfigError> {
        let size = config_a.max_datagram_size.max(config_b.max_datagram_size);
        Ok(Pair {
            net: Network::new(seed),
            a: Connection::new(config_a, 1, 2, start)?,
            b: Connection::new(config_b, 2, 1, start)?,
            now: start,
            buf: vec![0; size],
        })
    }

    /// Lets both connections send everything they have now.
    ///
    /// # Panics
    /// If a connection emits more than 100,000 datagrams at one instant: a connection that
    /// never stops sending is a bug, and the simulator says so instead of running out of memory.
    pub fn flush(&mut self) {
        for (conn, from, to) in [(&mut self.a, NODE_A, NODE_B), (&mut self.b, NODE_B, NODE_A)] {
            let mut sent = 0;
            while let Some(n) = conn.poll_transmit(self.now, &mut self.buf) {
                self.net.send(self.now, from, to, &self.buf[..n]);
                sent += 1;
                assert!(
                    sent < MAX_BURST,
                    "connection {} emitted {MAX_BURST} datagrams at one instant: {conn:?}",
                    conn.local_cid()
                );
            }
        }
    }

    /// The earliest deadline: a delivery or either connection's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.net.next_delivery(),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Transmits, advances to the next deadline (not past `limit`), delivers what is due and
    /// fires expired timers. Returns `false` when nothing is scheduled before `limit` (time
    /// is then at `limit`, or unchanged if nothing is scheduled at all).
    pub fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        let Some(next) = self.next_deadline() else {
            return false;
        };
        if next > limit {
            self.now = self.now.max(limit);
            return false;
        }
        self.now = self.now.max(next);
        while let Some(d) = self.net.poll_delivery(self.now) {
            let conn = if d.to == NODE_A {
                &mut self.a
            } else {
                &mut self.b
            };
            // Drops are counted by the connection; the simulator does not care why.
            let _ = conn.handle_datagram(self.now, &d.data);
        }
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        true
    }
}
