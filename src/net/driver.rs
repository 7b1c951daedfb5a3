//! The driver: an [`Endpoint`] on a real UDP socket, with the real clock.
//!
//! Two ways to run it:
//!
//! - **Your own loop.** Register the socket with your `mio::Poll`
//!   ([`Driver::register`]); when it is readable, or when [`Driver::next_timeout`] passes, call
//!   [`Driver::process`]; after you send messages, call [`Driver::flush`]. Nothing blocks.
//! - **A simple loop.** [`Driver::wait`] blocks until a datagram arrives, a timer expires or
//!   the given timeout passes, and processes what happened. [`Driver::busy_poll`] does the
//!   same without sleeping, for latency-critical programs that can spare a core.
//!
//! Either way, drain [`Driver::poll_event`] afterwards.
//!
//! A client and a server in one thread, in the simple style (this runs as a doc-test over
//! loopback):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use surely::endpoint::{EndpointConfig, EndpointEvent};
//! use surely::net::{Driver, SocketOptions};
//! use surely::{Event, Guarantee};
//!
//! let any = "127.0.0.1:0".parse().unwrap();
//! let opts = SocketOptions::default();
//! let mut server = Driver::bind(any, EndpointConfig::default(), &opts)?;
//! let mut client = Driver::bind(any, EndpointConfig::default().accept_incoming(false), &opts)?;
//! let handle = client.connect(server.local_addr()).unwrap();
//!
//! let (mut got, mut confirmed) = (None, false);
//! let give_up = Instant::now() + Duration::from_secs(10);
//! while !(got.is_some() && confirmed) && Instant::now() < give_up {
//!     client.wait(Some(Duration::from_millis(1)))?;
//!     server.wait(Some(Duration::from_millis(1)))?;
//!     while let Some(ev) = client.poll_event() {
//!         match ev {
//!             EndpointEvent::Connected { handle } => {
//!                 let conn = client.endpoint().connection_mut(handle).unwrap();
//!                 conn.send(Instant::now(), b"hello", Guarantee::ExactlyOnce).unwrap();
//!             }
//!             EndpointEvent::Connection { event: Event::Delivered { .. }, .. } => confirmed = true,
//!             _ => {}
//!         }
//!     }
//!     while let Some(ev) = server.poll_event() {
//!         if let EndpointEvent::Connection { event: Event::Message(m), .. } = ev {
//!             got = Some(m.payload);
//!         }
//!     }
//!     client.flush()?;
//!     server.flush()?;
//! }
//! assert_eq!(got.as_deref(), Some(&b"hello"[..]));
//! assert!(confirmed);
//! # let _ = handle;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The same server inside an application's own `mio::Poll`:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mio::{Events, Poll, Token};
//! use surely::endpoint::EndpointConfig;
//! use surely::net::{Driver, SocketOptions};
//!
//! let mut poll = Poll::new()?;
//! let mut events = Events::with_capacity(64);
//! let any = "127.0.0.1:0".parse().unwrap();
//! let mut server = Driver::bind(any, EndpointConfig::default(), &SocketOptions::default())?;
//! server.register(poll.registry(), Token(7))?;
//! for _ in 0..3 {
//!     // Sleep until the socket is readable or the endpoint's next timer is due.
//!     let timeout = server
//!         .next_timeout()
//!         .map(|t| t.saturating_duration_since(Instant::now()).min(Duration::from_millis(5)));
//!     poll.poll(&mut events, timeout)?;
//!     // Readable or timed out: either way, let the driver catch up (it never blocks).
//!     server.process()?;
//!     while let Some(_event) = server.poll_event() { /* handle it */ }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use super::socket::{RecvBatch, SendBatch, SocketOptions, UdpSocket};
use crate::endpoint::{ConnectError, ConnectionHandle, Endpoint, EndpointConfig, EndpointEvent};

/// Datagrams per batched system call.
const BATCH: usize = 64;
const SOCKET: Token = Token(0);

/// Counters of the driver's system calls.
/// New counters may be added in minor releases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Receive system calls that returned data.
    pub recv_calls: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Messages received from the kernel: fewer than `datagrams_in` when the kernel coalesced
    /// datagrams (GRO, see [`UdpSocket::gro_enabled`]).
    pub messages_in: u64,
    /// Send system calls.
    pub send_calls: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Messages handed to the kernel: fewer than `datagrams_out` when segmentation offload
    /// sent several datagrams as one (GSO, see [`UdpSocket::gso_enabled`]).
    pub messages_out: u64,
    /// Datagrams the kernel refused outright.
    pub send_failures: u64,
}

/// An endpoint bound to a UDP socket.
#[derive(Debug)]
pub struct Driver {
    socket: UdpSocket,
    endpoint: Endpoint,
    inb: RecvBatch,
    out: SendBatch,
    /// A private poll for [`wait`](Self::wait), created on first use (a socket can be
    /// registered with one poll only).
    poll: Option<(Poll, Events)>,
    registered: bool,
    next_rotation: Instant,
    stats: DriverStats,
}

impl Driver {
    /// Binds `addr` and creates an endpoint on it. The handshake secret comes from the
    /// operating system's random source.
    pub fn bind(
        addr: SocketAddr,
        config: EndpointConfig,
        options: &SocketOptions,
    ) -> io::Result<Driver> {
        let socket = UdpSocket::bind(addr, options)?;
        let now = Instant::now();
        let rotation = config.secret_rotation_period;
        let endpoint = Endpoint::new(config, random_secret(), now)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let slot = endpoint.buffer_size().max(1500);
        Ok(Driver {
            socket,
            endpoint,
            inb: RecvBatch::new(BATCH, slot.max(65536)),
            out: SendBatch::new(BATCH, slot),
            poll: None,
            registered: false,
            next_rotation: now + rotation,
            stats: DriverStats::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr()
    }

    /// The endpoint, to reach its connections (`connection_mut`) and statistics.
    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    /// System-call counters.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// The socket, e.g. to see whether it uses the kernel's offloads.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Starts a handshake with a server.
    pub fn connect(&mut self, remote: SocketAddr) -> Result<ConnectionHandle, ConnectError> {
        let handle = self.endpoint.connect(Instant::now(), remote)?;
        let _ = self.flush();
        Ok(handle)
    }

    /// The next event, if any.
    #[inline]
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.endpoint.poll_event()
    }

    /// Registers the socket with the application's poll, for readability.
    pub fn register(&mut self, registry: &mio::Registry, token: Token) -> io::Result<()> {
        registry.register(self.socket.source(), token, Interest::READABLE)?;
        self.registered = true;
        Ok(())
    }

    /// When [`process`](Self::process) must run next even if no datagram arrives.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        let t = self.endpoint.poll_timeout();
        Some(t.map_or(self.next_rotation, |t| t.min(self.next_rotation)))
    }

    /// Reads every waiting datagram, fires expired timers and sends what is ready. Call when
    /// the socket is readable or a timeout passed; calling more often is harmless.
    pub fn process(&mut self) -> io::Result<()> {
        self.receive()?;
        // One clock reading for the timers and the sends after them: nothing that takes
        // long happens in between. (`receive` reads the clock per batch it gets, and only
        // then, so a turn that finds no datagram, the usual busy-poll turn, reads it once.)
        let now = Instant::now();
        if now >= self.next_rotation {
            self.endpoint.rotate_secret(now, random_secret());
            self.next_rotation = now + self.endpoint.config().secret_rotation_period;
        }
        self.endpoint.handle_timeout(now);
        self.flush_at(now)
    }

    /// Sends everything the endpoint has ready (after the application sent messages). If the
    /// socket buffer is full the rest stays queued for the next call.
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_at(Instant::now())
    }

    /// [`flush`](Self::flush) with the time already read.
    fn flush_at(&mut self, now: Instant) -> io::Result<()> {
        loop {
            if self.out.pending() > 0 {
                self.send_pending()?;
                if self.out.pending() > 0 {
                    // Socket buffer full: keep the rest in the connections for later.
                    return Ok(());
                }
            }
            // Fill the batch until the endpoint has nothing more or the batch is full.
            let drained = loop {
                let Some(slot) = self.out.slot_mut() else {
                    break false;
                };
                match self.endpoint.poll_transmit(now, slot) {
                    Some((to, n)) => self.out.push(to, n),
                    None => break true,
                }
            };
            if self.out.pending() > 0 {
                self.send_pending()?;
            }
            // The endpoint said it has nothing more: asking again would only repeat that.
            // A full batch sent whole goes round again for the rest.
            if drained || self.out.pending() > 0 {
                return Ok(());
            }
        }
    }

    /// Blocks until a datagram arrives, the next timer expires or `timeout` passes, then
    /// processes. Uses a private poll; not for use together with [`register`](Self::register).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.poll.is_none() {
            let poll = Poll::new()?;
            poll.registry()
                .register(self.socket.source(), SOCKET, Interest::READABLE)?;
            self.poll = Some((poll, Events::with_capacity(8)));
        }
        let now = Instant::now();
        let mut wait = self
            .next_timeout()
            .map(|t| t.saturating_duration_since(now));
        if let Some(t) = timeout {
            wait = Some(wait.map_or(t, |w| w.min(t)));
        }
        if let Some((poll, events)) = self.poll.as_mut() {
            match poll.poll(events, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.process()
    }

    /// Processes without sleeping: reads, fires timers, sends. Call in a tight loop for the
    /// lowest latency (one core stays busy).
    pub fn busy_poll(&mut self) -> io::Result<()> {
        self.process()
    }

    fn receive(&mut self) -> io::Result<()> {
        // Read until WouldBlock, one batch per system call.
        loop {
            let n = self.socket.recv_batch(&mut self.inb)?;
            if n == 0 {
                return Ok(());
            }
            self.stats.recv_calls += 1;
            self.stats.datagrams_in += n as u64;
            self.stats.messages_in += self.inb.messages() as u64;
            let now = Instant::now();
            for i in 0..n {
                if let Some((from, data)) = self.inb.get(i) {
                    self.endpoint.handle_datagram(now, from, data);
                }
            }
            // Fewer messages than asked for: the socket is empty. (With GRO `n` counts the
            // datagrams, which can exceed the capacity without the batch being full.)
            if self.inb.messages() < self.inb.capacity() {
                return Ok(());
            }
        }
    }

    fn send_pending(&mut self) -> io::Result<()> {
        let (failed, messages) = (self.out.failed(), self.out.messages_sent());
        let sent = self.socket.send_batch(&mut self.out)?;
        self.stats.send_calls += 1;
        self.stats.datagrams_out += sent as u64;
        self.stats.messages_out += self.out.messages_sent() - messages;
        self.stats.send_failures += self.out.failed() - failed;
        Ok(())
    }
}

/// 16 bytes from the operating system's random source, falling back to the standard
/// library's randomly keyed hasher where `/dev/urandom` is missing.
fn random_secret() -> [u8; 16] {
    let mut key = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(&mut key).is_ok() {
            return key;
        }
    }
    use std::hash::{BuildHasher, Hasher};
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    key
}
