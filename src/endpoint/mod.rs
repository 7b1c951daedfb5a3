//! The endpoint: many connections behind one UDP address, the handshake that opens them, and
//! the limits that keep a server's memory bounded whatever arrives.
//!
//! An [`Endpoint`] is sans-IO like a [`Connection`]: datagrams (with their source address) and
//! the current time go in; datagrams (with their destination), events and the next deadline come
//! out. It serves incoming connections (a server, if
//! [`accept_incoming`](EndpointConfig::accept_incoming)) and opens outgoing ones
//! ([`connect`](Endpoint::connect)), both at once if wanted.
//!
//! # The handshake
//!
//! ```text
//! client                                       server
//!   INITIAL (client cid, params, >= 1200 B) -->
//!                                           <-- RETRY (cookie, 32 B)        no state kept
//!   INITIAL (same, + cookie)               -->
//!                                           <-- ACCEPT (server cid)         connection made
//!   DATA (to server cid)                  <-->  DATA (to client cid)
//! ```
//!
//! The server keeps **no state for a peer until the peer echoes a cookie**: a SipHash-2-4 tag of
//! the peer's address, its connection id and a coarse timestamp under a secret the application
//! supplies and rotates ([`rotate_secret`](Endpoint::rotate_secret)). Before a cookie comes back
//! the server answers each INITIAL with at most one small packet (RETRY or REFUSE), never more
//! bytes than the INITIAL had, and at most
//! [`max_handshakes_per_sec`](EndpointConfig::max_handshakes_per_sec) of them. A lost INITIAL,
//! RETRY or ACCEPT is recovered by the client's retransmission timer (doubling, at most
//! [`handshake_retries`](EndpointConfig::handshake_retries) times); a repeated INITIAL for a
//! connection that exists gets the ACCEPT again. The byte layout is in `docs/PROTOCOL.md`,
//! section "Handshake", and in [`wire::HandshakePacket`].
//!
//! DATA packets are routed by the connection id in their header (bytes 2..10), chosen at random
//! by each receiving end; a datagram naming no connection, or coming from an address other than
//! the connection's peer, is counted and dropped.
//!
//! # Events
//!
//! Everything the application must know comes out of [`poll_event`](Endpoint::poll_event):
//! endpoint events (new connection, connected, refused, closed...) and **every event of every
//! connection**, as [`EndpointEvent::Connection`]. A connection's events are taken from it
//! only when the application asks for the next event, so the connection's receive buffer
//! accounting (back-pressure) still holds. Do not call [`Connection::poll_event`] on a
//! connection obtained through [`connection_mut`](Endpoint::connection_mut): its events would
//! bypass the endpoint, which would then not learn why it closed.
//!
//! After a connection reaches `Closed` and its last event was taken, the endpoint reports
//! [`EndpointEvent::ConnectionClosed`] and frees its slot (its handle is then stale: every
//! method answers `None` for it).
//!
//! # Call order
//!
//! As for a connection: feed input ([`handle_datagram`](Endpoint::handle_datagram),
//! [`handle_timeout`](Endpoint::handle_timeout)) and commands ([`connect`](Endpoint::connect),
//! anything on [`connection_mut`](Endpoint::connection_mut)), then drain
//! [`poll_transmit`](Endpoint::poll_transmit) until `None`, [`poll_event`](Endpoint::poll_event)
//! until `None`, and wait until [`poll_timeout`](Endpoint::poll_timeout) or the next datagram.
//! `now` must never go backwards. A connection the application touched through
//! `connection_mut` is looked at again by the next `poll_*` call; the endpoint keeps every
//! connection's deadline in an ordered set, so the cost per timer event or datagram is
//! `O(log n)` in the number of connections, never a scan.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use surely::endpoint::{Endpoint, EndpointConfig, EndpointEvent};
//! use surely::{Event, Guarantee};
//!
//! # #[allow(clippy::disallowed_methods)]
//! let mut now = Instant::now();
//! let server_addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
//! let client_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
//! // The secrets come from the application (a CSPRNG in real use).
//! let mut server = Endpoint::new(EndpointConfig::default(), [1; 16], now).unwrap();
//! let client_config = EndpointConfig::default().accept_incoming(false).rng_seed(9);
//! let mut client = Endpoint::new(client_config, [2; 16], now).unwrap();
//!
//! let handle = client.connect(now, server_addr).unwrap();
//! let mut buf = vec![0u8; server.buffer_size()];
//! let mut got = None;
//! for _ in 0..50 {
//!     // Hand every datagram across (a perfect network).
//!     while let Some((to, n)) = client.poll_transmit(now, &mut buf) {
//!         assert_eq!(to, server_addr);
//!         server.handle_datagram(now, client_addr, &buf[..n]);
//!     }
//!     while let Some((to, n)) = server.poll_transmit(now, &mut buf) {
//!         assert_eq!(to, client_addr);
//!         client.handle_datagram(now, server_addr, &buf[..n]);
//!     }
//!     while let Some(ev) = client.poll_event() {
//!         if let EndpointEvent::Connected { handle: h } = ev {
//!             let conn = client.connection_mut(h).unwrap();
//!             conn.send(now, b"hello", Guarantee::ExactlyOnce).unwrap();
//!         }
//!     }
//!     while let Some(ev) = server.poll_event() {
//!         if let EndpointEvent::Connection { event: Event::Message(m), .. } = ev {
//!             got = Some(m.payload);
//!         }
//!     }
//!     if got.is_some() {
//!         break;
//!     }
//!     let next = [client.poll_timeout(), server.poll_timeout()].into_iter().flatten().min();
//!     now = next.unwrap_or(now + Duration::from_millis(1)).max(now);
//!     client.handle_timeout(now);
//!     server.handle_timeout(now);
//! }
//! assert_eq!(got.as_deref(), Some(&b"hello"[..]));
//! assert!(client.connection(handle).is_some());
//! assert_eq!(server.connection_count(), 1);
//! ```

mod client;
mod config;
mod cookie;
mod deadlines;
mod event;
pub(crate) mod rate;
mod server;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError};
use crate::connection::Connection;
use crate::event::{CloseReason, Event};
use crate::rng::Rng;
use crate::wire::{
    self, Crc32, HandshakePacket, MAX_COOKIE_LEN, MIN_INITIAL_DATAGRAM, PacketType, TransportParams,
};

pub use crate::wire::RefuseReason;
pub use config::EndpointConfig;
pub use event::{ConnectError, ConnectFailReason, ConnectionHandle, EndpointEvent, EndpointStats};

use crate::limits::EndpointLimits;
use cookie::{COOKIE_LEN, CookieJar};
use deadlines::Deadlines;

pub use crate::limits::{
    MAX_QUEUED_HANDSHAKE_PACKETS, MAX_QUEUED_REFUSED_EVENTS, MAX_RETRIES_FOLLOWED,
};

/// One entry of the connection table; `generation` tells a stale handle from the current one.
#[derive(Debug)]
struct Slot {
    generation: u32,
    entry: Option<Entry>,
    /// The deadline this slot has in `Endpoint::timers`.
    timer: Option<Instant>,
    in_tx: bool,
    in_ev: bool,
    in_touched: bool,
}

#[derive(Debug)]
enum Entry {
    /// An outgoing handshake.
    Connecting(Connecting),
    /// An established connection (possibly closing).
    Open(Open),
}

#[derive(Debug)]
struct Connecting {
    remote: SocketAddr,
    local_cid: u64,
    cookie: Option<([u8; MAX_COOKIE_LEN], usize)>,
    /// INITIALs sent so far (the next one's attempt number).
    sent: u32,
    /// Retransmission timeouts so far.
    timeouts: u32,
    retries_followed: u32,
    initial_due: bool,
    deadline: Instant,
}

#[derive(Debug)]
struct Open {
    conn: Box<Connection>,
    remote: SocketAddr,
    /// Server side: the client's connection id (key of `Endpoint::by_peer`).
    client_cid: Option<u64>,
    /// From the connection's `Closed` event, once taken.
    close_reason: Option<CloseReason>,
}

/// A handshake packet waiting for `poll_transmit`. `budget` is the size of the datagram that
/// caused an answer to an address not validated yet: the answer may not be larger.
#[derive(Debug)]
enum Outgoing {
    Retry {
        to: SocketAddr,
        client_cid: u64,
        attempt: u32,
        cookie: [u8; COOKIE_LEN],
        budget: usize,
    },
    Accept {
        to: SocketAddr,
        client_cid: u64,
        attempt: u32,
        server_cid: u64,
        max_datagram_size: u64,
    },
    Refuse {
        to: SocketAddr,
        client_cid: u64,
        attempt: u32,
        reason: RefuseReason,
        budget: Option<usize>,
    },
}

/// Many connections behind one UDP address; see the [module documentation](self).
pub struct Endpoint {
    config: EndpointConfig,
    transport: Arc<Config>,
    rng: Rng,
    cid_key: [u8; 16],
    cookies: CookieJar,
    /// Connections, handshake rate and queues, checked in [`crate::limits`].
    limits: EndpointLimits,
    slots: Vec<Slot>,
    free: Vec<u32>,
    open: usize,
    connecting: usize,
    /// Local connection id -> slot: routes DATA and handshake answers.
    by_cid: BTreeMap<u64, u32>,
    /// Server side: (client address, client cid) -> slot, to answer a repeated INITIAL.
    by_peer: BTreeMap<(SocketAddr, u64), u32>,
    /// Every slot's next deadline.
    timers: Deadlines,
    /// Slots that may have datagrams to send, events to hand out, or a stale deadline.
    tx: VecDeque<u32>,
    ev: VecDeque<u32>,
    touched: Vec<u32>,
    outgoing: VecDeque<Outgoing>,
    events: VecDeque<EndpointEvent>,
    refused_events: usize,
    stats: EndpointStats,
    due_scratch: Vec<u32>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("open", &self.open)
            .field("connecting", &self.connecting)
            .field("outgoing", &self.outgoing.len())
            .field("events", &self.events.len())
            .field("cookies", &self.cookies)
            .finish_non_exhaustive()
    }
}

/// Label of the key connection ids are drawn with.
const CID_KEY_LABEL: u8 = 1;

impl Endpoint {
    /// Creates an endpoint. `secret` keys the handshake cookies (and the connection ids): take it
    /// from a cryptographic random source; the endpoint itself never reads entropy.
    pub fn new(
        config: EndpointConfig,
        secret: [u8; 16],
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let cookies = CookieJar::new(
            secret,
            now,
            config.cookie_lifetime,
            config.secret_rotation_period,
        );
        Ok(Endpoint {
            transport: Arc::new(config.transport.clone()),
            rng: Rng::new(config.rng_seed),
            cid_key: cookies.derive_key(CID_KEY_LABEL),
            cookies,
            limits: EndpointLimits::new(&config),
            config,
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            connecting: 0,
            by_cid: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            timers: Deadlines::default(),
            tx: VecDeque::new(),
            ev: VecDeque::new(),
            touched: Vec::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            refused_events: 0,
            stats: EndpointStats::default(),
            due_scratch: Vec::new(),
        })
    }

    // ------------------------------------------------------------------ getters

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Established connections (closing ones included, until freed).
    pub fn connection_count(&self) -> usize {
        self.open
    }

    /// Outgoing handshakes in progress. A server keeps no handshake state: incoming handshakes
    /// are never counted here.
    pub fn handshake_count(&self) -> usize {
        self.connecting
    }

    /// The smallest buffer [`poll_transmit`](Self::poll_transmit) needs: the larger of an
    /// INITIAL (1200 bytes) and the transport's `max_datagram_size`.
    pub fn buffer_size(&self) -> usize {
        MIN_INITIAL_DATAGRAM.max(self.transport.max_datagram_size)
    }

    /// The established connection `handle` names, if any.
    pub fn connection(&self, handle: ConnectionHandle) -> Option<&Connection> {
        match &self.slot(handle)?.entry {
            Some(Entry::Open(o)) => Some(&o.conn),
            _ => None,
        }
    }

    /// The peer's address of a connection or outgoing handshake.
    pub fn remote_address(&self, handle: ConnectionHandle) -> Option<SocketAddr> {
        match self.slot(handle)?.entry.as_ref()? {
            Entry::Open(o) => Some(o.remote),
            Entry::Connecting(c) => Some(c.remote),
        }
    }

    // ------------------------------------------------------------------ commands

    /// The established connection `handle` names, to `send`, `ack`, `reject` or `close` on it
    /// (not to `poll_event`: see the [module documentation](self)). `None` while the handshake
    /// is in progress and once the handle is stale.
    ///
    /// The endpoint looks at the connection again (datagrams to send, deadline, events) at the
    /// next `poll_*` call.
    pub fn connection_mut(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        let idx = handle.index;
        if !matches!(self.slot(handle)?.entry, Some(Entry::Open(_))) {
            return None;
        }
        self.enqueue(idx, true, true);
        let slot = self.slots.get_mut(idx as usize)?;
        if !slot.in_touched {
            slot.in_touched = true;
            self.touched.push(idx);
        }
        match &mut slot.entry {
            Some(Entry::Open(o)) => Some(&mut o.conn),
            _ => None,
        }
    }

    /// Starts a handshake with the server at `remote`. The result arrives as
    /// [`EndpointEvent::Connected`] or [`EndpointEvent::ConnectFailed`] with the returned handle;
    /// until then [`connection_mut`](Self::connection_mut) answers `None`.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
    ) -> Result<ConnectionHandle, ConnectError> {
        self.settle_touched();
        if self.is_full() {
            return Err(ConnectError::TooManyConnections);
        }
        let local_cid = self.fresh_cid().ok_or(ConnectError::NoConnectionId)?;
        let entry = Entry::Connecting(Connecting {
            remote,
            local_cid,
            cookie: None,
            sent: 0,
            timeouts: 0,
            retries_followed: 0,
            initial_due: true,
            deadline: later(now, self.backoff(0)),
        });
        let idx = self.alloc(entry).ok_or(ConnectError::TooManyConnections)?;
        self.by_cid.insert(local_cid, idx);
        self.connecting += 1;
        self.stats.handshakes_started += 1;
        self.enqueue(idx, true, false);
        self.refresh_timer(idx);
        Ok(self.handle_of(idx))
    }

    /// Replaces the cookie secret with `secret` (from a cryptographic random source). Cookies
    /// made under the previous secret stay valid for one more rotation period; older ones are
    /// rejected. Call every [`secret_rotation_period`](EndpointConfig::secret_rotation_period);
    /// if the application does not, the endpoint ratchets the secret forward by itself.
    pub fn rotate_secret(&mut self, now: Instant, secret: [u8; 16]) {
        self.cookies.rotate(now, secret);
    }

    // ------------------------------------------------------------------ input

    /// Processes one datagram that arrived from `from`. Anything that is not a valid packet
    /// for a known connection or handshake is counted in [`stats`](Self::stats) and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.settle_touched();
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        let Ok((header, body)) = wire::open(datagram, &Crc32) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if header.packet_type == PacketType::Data {
            self.on_data(now, from, header.conn_id, datagram);
            return;
        }
        let Ok(packet) = HandshakePacket::parse(&header, body, datagram.len()) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        match packet {
            HandshakePacket::Initial {
                attempt,
                client_cid,
                params,
                cookie,
            } => {
                let initial = server::Initial {
                    from,
                    len: datagram.len(),
                    attempt,
                    client_cid,
                    params,
                };
                self.on_initial(now, initial, cookie);
            }
            HandshakePacket::Retry {
                client_cid, cookie, ..
            } => self.on_retry(now, from, client_cid, cookie),
            HandshakePacket::Accept {
                client_cid,
                server_cid,
                max_datagram_size,
                ..
            } => self.on_accept(now, from, client_cid, server_cid, max_datagram_size),
            HandshakePacket::Refuse {
                client_cid, reason, ..
            } => self.on_refuse(from, client_cid, reason),
        }
    }

    /// Processes every deadline that has passed: connection timers and handshake
    /// retransmissions. Calling earlier or more often than
    /// [`poll_timeout`](Self::poll_timeout) asks is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle_touched();
        let mut due = std::mem::take(&mut self.due_scratch);
        due.clear();
        while let Some((at, idx)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(slot) = self.slots.get_mut(idx as usize) {
                slot.timer = None;
            }
            due.push(idx);
        }
        for &idx in &due {
            match self.entry_mut(idx) {
                Some(Entry::Open(o)) => {
                    o.conn.handle_timeout(now);
                    let tx = o.conn.wants_transmit();
                    self.enqueue(idx, tx, true);
                    self.refresh_timer(idx);
                }
                Some(Entry::Connecting(_)) => self.on_handshake_timeout(now, idx),
                None => {}
            }
        }
        self.due_scratch = due;
    }

    // ------------------------------------------------------------------ output

    /// Writes the next datagram to send into `buf` and returns its destination and length, or
    /// `None` when there is nothing to send now. Call until `None`. `buf` must hold at least
    /// [`buffer_size`](Self::buffer_size) bytes (otherwise nothing is written).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        self.settle_touched();
        if buf.len() < self.buffer_size() {
            return None;
        }
        while let Some(out) = self.outgoing.pop_front() {
            if let Some(sent) = self.encode_outgoing(&out, buf) {
                return Some(self.count_sent(sent));
            }
        }
        let params = self.params();
        while let Some(&idx) = self.tx.front() {
            let entry = self
                .slots
                .get_mut(idx as usize)
                .and_then(|s| s.entry.as_mut());
            match entry {
                Some(Entry::Connecting(c)) if c.initial_due => {
                    c.initial_due = false;
                    let packet = HandshakePacket::Initial {
                        attempt: c.sent,
                        client_cid: c.local_cid,
                        params,
                        cookie: c.cookie.as_ref().and_then(|(b, n)| b.get(..*n)),
                    };
                    if let Ok(n) = packet.encode(buf, &Crc32) {
                        c.sent = c.sent.saturating_add(1);
                        let to = c.remote;
                        return Some(self.count_sent((to, n)));
                    }
                }
                Some(Entry::Open(o)) => {
                    if let Some(n) = o.conn.poll_transmit(now, buf) {
                        let to = o.remote;
                        if !o.conn.wants_transmit() {
                            // Drained: the next call need not ask it again.
                            self.tx.pop_front();
                            if let Some(slot) = self.slots.get_mut(idx as usize) {
                                slot.in_tx = false;
                            }
                        }
                        self.refresh_timer(idx);
                        return Some(self.count_sent((to, n)));
                    }
                }
                _ => {}
            }
            self.tx.pop_front();
            if let Some(slot) = self.slots.get_mut(idx as usize) {
                slot.in_tx = false;
            }
            self.refresh_timer(idx);
        }
        None
    }

    /// The next event: endpoint events first, then the events of connections, one connection
    /// at a time. Frees the slot of a closed connection once its events are all taken (and
    /// reports [`EndpointEvent::ConnectionClosed`]).
    #[inline]
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        // The common case, inlined into the caller: no endpoint event, and a message or
        // outcome of the first connection on the event list. (Settling the deadlines of
        // connections the application touched only moves timers; the slow path does it.)
        if self.events.is_empty() {
            if let Some(&idx) = self.ev.front() {
                if let Some(slot) = self.slots.get_mut(idx as usize) {
                    let generation = slot.generation;
                    if let Some(Entry::Open(o)) = &mut slot.entry {
                        if o.conn.has_event_other_than_closed() {
                            let event = o.conn.poll_event()?;
                            let handle = ConnectionHandle {
                                index: idx,
                                generation,
                            };
                            return Some(EndpointEvent::Connection { handle, event });
                        }
                    }
                }
            }
        }
        self.poll_event_slow()
    }

    /// [`poll_event`](Self::poll_event) in every case.
    #[inline(never)]
    fn poll_event_slow(&mut self) -> Option<EndpointEvent> {
        self.settle_touched();
        if let Some(event) = self.events.pop_front() {
            if matches!(event, EndpointEvent::Refused { .. }) {
                self.refused_events = self.refused_events.saturating_sub(1);
            }
            return Some(event);
        }
        while let Some(&idx) = self.ev.front() {
            let handle = self.handle_of(idx);
            if let Some(Entry::Open(o)) = self.entry_mut(idx) {
                if let Some(event) = o.conn.poll_event() {
                    if let Event::Closed { reason } = &event {
                        o.close_reason = Some(reason.clone());
                    }
                    return Some(EndpointEvent::Connection { handle, event });
                }
                if o.conn.is_closed() {
                    let reason = o.close_reason.take().unwrap_or(CloseReason::Local);
                    self.ev.pop_front();
                    // Off the event list: a connection that reuses the slot must be able to
                    // join it again.
                    if let Some(slot) = self.slots.get_mut(idx as usize) {
                        slot.in_ev = false;
                    }
                    self.free_slot(idx);
                    self.stats.connections_closed += 1;
                    return Some(EndpointEvent::ConnectionClosed { handle, reason });
                }
            }
            self.ev.pop_front();
            if let Some(slot) = self.slots.get_mut(idx as usize) {
                slot.in_ev = false;
            }
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.settle_touched();
        self.timers.first().map(|(at, _)| at)
    }

    // ------------------------------------------------------------------ data

    fn on_data(&mut self, now: Instant, from: SocketAddr, cid: u64, datagram: &[u8]) {
        let Some(&idx) = self.by_cid.get(&cid) else {
            self.stats.dropped_unknown_cid += 1;
            return;
        };
        match self.entry_mut(idx) {
            Some(Entry::Open(o)) if o.remote == from => {
                // Errors are counted by the connection. `handle_datagram` verified the
                // datagram's CRC-32; the connection checks again only if it uses another check.
                let _ = o.conn.handle_crc32_verified_datagram(now, datagram);
                // On the transmit list only with something to send: an acknowledgement that
                // waits for its delay comes with the timer (or the application's next call).
                let tx = o.conn.wants_transmit();
                self.enqueue(idx, tx, true);
                self.refresh_timer(idx);
            }
            Some(Entry::Open(_)) => self.stats.dropped_wrong_address += 1,
            _ => self.stats.dropped_unknown_cid += 1,
        }
    }

    // ------------------------------------------------------------------ internals

    fn slot(&self, handle: ConnectionHandle) -> Option<&Slot> {
        let slot = self.slots.get(handle.index as usize)?;
        (slot.generation == handle.generation && slot.entry.is_some()).then_some(slot)
    }

    fn entry_mut(&mut self, idx: u32) -> Option<&mut Entry> {
        self.slots.get_mut(idx as usize)?.entry.as_mut()
    }

    fn handle_of(&self, idx: u32) -> ConnectionHandle {
        ConnectionHandle {
            index: idx,
            generation: self
                .slots
                .get(idx as usize)
                .map_or(0, |slot| slot.generation),
        }
    }

    fn is_full(&self) -> bool {
        !self.limits.admit_connection(self.open, self.connecting)
    }

    fn params(&self) -> TransportParams {
        TransportParams {
            max_datagram_size: self.transport.max_datagram_size as u64,
            initial_packet_number: self.transport.initial_packet_number,
            initial_message_id: self.transport.initial_message_id,
        }
    }

    /// The datagram size both ends use: the smaller of ours and the peer's.
    fn negotiated_size(&self, peer: u64) -> usize {
        let ours = self.transport.max_datagram_size;
        usize::try_from(peer).map_or(ours, |peer| peer.min(ours))
    }

    /// The connection configuration for a datagram size (shared when it is ours).
    fn config_for(&self, mds: usize) -> Option<Arc<Config>> {
        if mds == self.transport.max_datagram_size {
            return Some(self.transport.clone());
        }
        let config = (*self.transport).clone().max_datagram_size(mds);
        config.validate().ok()?;
        Some(Arc::new(config))
    }

    /// The wait before the next retransmission after `timeouts` timeouts.
    fn backoff(&self, timeouts: u32) -> Duration {
        self.config
            .handshake_timeout
            .saturating_mul(1u32 << timeouts.min(16))
    }

    fn backoff_for(&self, idx: u32) -> Duration {
        match self.slots.get(idx as usize).and_then(|s| s.entry.as_ref()) {
            Some(Entry::Connecting(c)) => self.backoff(c.timeouts),
            _ => self.backoff(0),
        }
    }

    /// A random unused connection id: the seeded generator's output, keyed with a key derived
    /// from the secret, so ids cannot be predicted from the seed or from earlier ids.
    fn fresh_cid(&mut self) -> Option<u64> {
        for _ in 0..16 {
            let draw = self.rng.next_u64().to_be_bytes();
            let cid = cookie::siphash24(&self.cid_key, &draw);
            if cid != 0 && !self.by_cid.contains_key(&cid) {
                return Some(cid);
            }
        }
        None
    }

    fn alloc(&mut self, entry: Entry) -> Option<u32> {
        if let Some(idx) = self.free.pop() {
            let slot = self.slots.get_mut(idx as usize)?;
            slot.entry = Some(entry);
            return Some(idx);
        }
        let idx = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(Slot {
            generation: 0,
            entry: Some(entry),
            timer: None,
            in_tx: false,
            in_ev: false,
            in_touched: false,
        });
        Some(idx)
    }

    /// Frees a slot: its ids, its deadline and its entry. List memberships stay (flags live in
    /// the slot) and are skipped when reached.
    fn free_slot(&mut self, idx: u32) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        let Some(entry) = slot.entry.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        if slot.timer.take().is_some() {
            self.timers.remove(idx);
        }
        match entry {
            Entry::Connecting(c) => {
                self.connecting -= 1;
                self.by_cid.remove(&c.local_cid);
            }
            Entry::Open(o) => {
                self.open -= 1;
                self.by_cid.remove(&o.conn.local_cid());
                if let Some(cid) = o.client_cid {
                    self.by_peer.remove(&(o.remote, cid));
                }
            }
        }
        self.free.push(idx);
    }

    /// Puts a slot on the transmit list if `tx`, and on the event list if `events`.
    fn enqueue(&mut self, idx: u32, tx: bool, events: bool) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        if tx && !slot.in_tx {
            slot.in_tx = true;
            self.tx.push_back(idx);
        }
        if events && !slot.in_ev {
            slot.in_ev = true;
            self.ev.push_back(idx);
        }
    }

    /// Moves a slot's entry in the deadline set to its current deadline: `O(log n)`.
    fn refresh_timer(&mut self, idx: u32) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        let want = match &slot.entry {
            Some(Entry::Open(o)) => o.conn.poll_timeout(),
            Some(Entry::Connecting(c)) => Some(c.deadline),
            None => None,
        };
        if slot.timer == want {
            return;
        }
        slot.timer = want;
        self.timers.set(idx, want);
    }

    /// Refreshes the deadlines of connections the application touched. Every public call
    /// starts with this, and nearly always there are none: that check stays inline.
    #[inline]
    fn settle_touched(&mut self) {
        if !self.touched.is_empty() {
            self.settle_touched_now();
        }
    }

    #[inline(never)]
    fn settle_touched_now(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for &idx in &touched {
            if let Some(slot) = self.slots.get_mut(idx as usize) {
                slot.in_touched = false;
            }
            self.refresh_timer(idx);
        }
        touched.clear();
        self.touched = touched;
    }

    /// Queues a handshake packet; `false` if the queue is full.
    fn queue(&mut self, out: Outgoing) -> bool {
        if !self.limits.admit_handshake_packet(self.outgoing.len()) {
            self.stats.dropped_queue_full += 1;
            return false;
        }
        self.outgoing.push_back(out);
        true
    }

    /// Writes a queued handshake packet, unless it would break the amplification limit.
    fn encode_outgoing(&mut self, out: &Outgoing, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let (to, packet, budget) = match *out {
            Outgoing::Retry {
                to,
                client_cid,
                attempt,
                ref cookie,
                budget,
            } => (
                to,
                HandshakePacket::Retry {
                    client_cid,
                    attempt,
                    cookie,
                },
                Some(budget),
            ),
            Outgoing::Accept {
                to,
                client_cid,
                attempt,
                server_cid,
                max_datagram_size,
            } => (
                to,
                HandshakePacket::Accept {
                    client_cid,
                    attempt,
                    server_cid,
                    max_datagram_size,
                },
                None,
            ),
            Outgoing::Refuse {
                to,
                client_cid,
                attempt,
                reason,
                budget,
            } => (
                to,
                HandshakePacket::Refuse {
                    client_cid,
                    attempt,
                    reason,
                },
                budget,
            ),
        };
        let n = packet.encode(buf, &Crc32).ok()?;
        if let Some(budget) = budget {
            if n > budget {
                self.stats.dropped_amplification += 1;
                return None;
            }
            self.stats.bytes_sent_unvalidated += n as u64;
        }
        Some((to, n))
    }

    fn count_sent(&mut self, sent: (SocketAddr, usize)) -> (SocketAddr, usize) {
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += sent.1 as u64;
        sent
    }
}

/// `now + wait`, or `now` if that is not representable (a deadline that fires at once).
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn initial(cid: u64, cookie: Option<&[u8]>) -> Vec<u8> {
        let params = TransportParams {
            max_datagram_size: 1200,
            initial_packet_number: 0,
            initial_message_id: 0,
        };
        let p = HandshakePacket::Initial {
            attempt: 0,
            client_cid: cid,
            params,
            cookie,
        };
        let mut buf = vec![0u8; 1500];
        let n = p.encode(&mut buf, &Crc32).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn the_timer_set_tracks_each_slot_once() {
        let now = t0();
        let mut e = Endpoint::new(EndpointConfig::default(), [3; 16], now).unwrap();
        let handles: Vec<_> = (0..10).map(|p| e.connect(now, addr(p)).unwrap()).collect();
        assert_eq!(e.timers.len(), 10);
        assert_eq!(e.handshake_count(), 10);
        let mut buf = vec![0u8; e.buffer_size()];
        let mut sent = 0;
        while let Some((_, n)) = e.poll_transmit(now, &mut buf) {
            assert_eq!(n, MIN_INITIAL_DATAGRAM);
            sent += 1;
        }
        assert_eq!(sent, 10);
        assert_eq!(e.poll_timeout(), Some(now + Duration::from_millis(250)));
        e.handle_timeout(now + Duration::from_millis(250));
        assert_eq!(e.timers.len(), 10);
        assert_eq!(
            e.poll_timeout(),
            Some(now + Duration::from_millis(250 + 500))
        );
        assert!(handles.iter().all(|h| e.remote_address(*h).is_some()));
    }

    /// Passes every datagram `from` has ready to `to`; returns how many.
    fn pass(now: Instant, from: (&mut Endpoint, SocketAddr), to: &mut Endpoint) -> usize {
        let mut buf = vec![0u8; from.0.buffer_size()];
        let mut n = 0;
        while let Some((_, len)) = from.0.poll_transmit(now, &mut buf) {
            to.handle_datagram(now, from.1, &buf[..len]);
            n += 1;
        }
        n
    }

    #[test]
    fn only_connections_with_something_to_send_are_asked_to_transmit() {
        let now = t0();
        let (ca, sa) = (addr(1), addr(2));
        let client_config = EndpointConfig::default().accept_incoming(false);
        let mut client = Endpoint::new(client_config, [1; 16], now).unwrap();
        let mut server = Endpoint::new(EndpointConfig::default(), [2; 16], now).unwrap();
        let h = client.connect(now, sa).unwrap();
        for _ in 0..8 {
            pass(now, (&mut client, ca), &mut server);
            pass(now, (&mut server, sa), &mut client);
        }
        while client.poll_event().is_some() {}
        while server.poll_event().is_some() {}
        let conn = client.connection_mut(h).expect("connected");
        conn.send(now, b"ping", crate::Guarantee::ExactlyOnce)
            .unwrap();
        let mut buf = vec![0u8; client.buffer_size()];
        let (_, len) = client.poll_transmit(now, &mut buf).expect("the message");
        // The packet took everything: the connection left the transmit list with it.
        assert!(client.tx.is_empty());
        server.handle_datagram(now, ca, &buf[..len]);
        // The server owes only a delayed acknowledgement: it is not asked before the delay.
        assert!(server.tx.is_empty());
        assert!(matches!(
            server.poll_event(),
            Some(EndpointEvent::Connection {
                event: Event::Message(_),
                ..
            })
        ));
        assert_eq!(pass(now, (&mut server, sa), &mut client), 0);
        let due = server.poll_timeout().expect("the acknowledgement's timer");
        assert!(due > now);
        server.handle_timeout(due);
        assert!(!server.tx.is_empty());
        assert_eq!(pass(due, (&mut server, sa), &mut client), 1);
        assert!(server.tx.is_empty());
        let delivered = std::iter::from_fn(|| client.poll_event()).any(|e| {
            matches!(
                e,
                EndpointEvent::Connection {
                    event: Event::Delivered { .. },
                    ..
                }
            )
        });
        assert!(delivered);
    }

    #[test]
    fn stale_handles_are_refused_after_reuse() {
        let now = t0();
        let config = EndpointConfig::default().handshake_retries(0);
        let mut e = Endpoint::new(config, [3; 16], now).unwrap();
        let h1 = e.connect(now, addr(1)).unwrap();
        e.handle_timeout(now + Duration::from_secs(1));
        assert!(matches!(
            e.poll_event(),
            Some(EndpointEvent::ConnectFailed {
                reason: ConnectFailReason::TimedOut,
                ..
            })
        ));
        let h2 = e.connect(now, addr(2)).unwrap();
        assert_eq!(h1.index, h2.index);
        assert_ne!(h1, h2);
        assert_eq!(e.remote_address(h1), None);
        assert_eq!(e.remote_address(h2), Some(addr(2)));
        assert!(e.connection_mut(h1).is_none());
    }

    #[test]
    fn a_server_answers_an_initial_with_a_small_retry_and_keeps_nothing() {
        let now = t0();
        let mut e = Endpoint::new(EndpointConfig::default(), [3; 16], now).unwrap();
        let d = initial(77, None);
        e.handle_datagram(now, addr(9), &d);
        let mut buf = vec![0u8; e.buffer_size()];
        let (to, n) = e.poll_transmit(now, &mut buf).unwrap();
        assert_eq!(to, addr(9));
        assert!(n < d.len());
        let Ok(HandshakePacket::Retry {
            client_cid, cookie, ..
        }) = HandshakePacket::decode(&buf[..n], &Crc32)
        else {
            panic!("not a RETRY");
        };
        assert_eq!(client_cid, 77);
        assert_eq!(cookie.len(), COOKIE_LEN);
        assert_eq!(e.slots.len(), 0);
        assert!(e.by_peer.is_empty() && e.by_cid.is_empty() && e.timers.is_empty());

        // Echoing the cookie creates the connection.
        let cookie = cookie.to_vec();
        e.handle_datagram(now, addr(9), &initial(77, Some(&cookie)));
        assert_eq!(e.connection_count(), 1);
        let (_, n) = e.poll_transmit(now, &mut buf).unwrap();
        assert!(matches!(
            HandshakePacket::decode(&buf[..n], &Crc32),
            Ok(HandshakePacket::Accept { client_cid: 77, .. })
        ));
        // A repeated INITIAL gets the ACCEPT again, and nothing new.
        e.handle_datagram(now, addr(9), &initial(77, Some(&cookie)));
        let (_, n2) = e.poll_transmit(now, &mut buf).unwrap();
        assert_eq!(n2, n);
        assert_eq!(e.connection_count(), 1);
        assert_eq!(e.stats().handshakes_completed, 1);
    }
}
