//! A fault-injecting UDP relay for tests and demos over real sockets.
//!
//! The relay listens on one address and forwards every datagram to an upstream address, and
//! the replies back, through the simulator's link model ([`LinkConfig`]): loss, bursts,
//! duplication, reordering, corruption, delay and jitter, in real time. Each client gets its
//! own upstream socket, so the server sees distinct peers. It runs on its own thread and
//! stops when dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use surely::net::relay::Relay;
//! use surely::sim::LinkConfig;
//!
//! let server = "127.0.0.1:4000".parse().unwrap();
//! let link = LinkConfig::perfect(Duration::from_millis(1)).loss(0.05).duplicate(0.05);
//! let relay = Relay::spawn("127.0.0.1:0".parse().unwrap(), server, link, 7).unwrap();
//! // clients send to relay.local_addr() instead of the server
//! # drop(relay);
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use super::socket::{RecvBatch, SendBatch, SocketOptions, UdpSocket};
use crate::sim::{LinkConfig, NetStats, Network};

/// Most clients one relay serves.
const MAX_CLIENTS: usize = 256;
/// Longest the relay thread sleeps before checking whether it should stop.
const TICK: Duration = Duration::from_millis(5);
const FRONT: Token = Token(usize::MAX);

/// Counters of a relay, readable while it runs.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Datagrams received from either side.
    pub received: AtomicU64,
    /// Datagrams forwarded (copies included).
    pub forwarded: AtomicU64,
    /// Datagrams dropped by the link model (loss, partitions, queue).
    pub dropped: AtomicU64,
    /// Extra copies made.
    pub duplicated: AtomicU64,
    /// Datagrams corrupted.
    pub corrupted: AtomicU64,
}

/// A running relay; stops and joins its thread when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<RelayCounters>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Binds `listen` and starts relaying to `upstream` through `link` (both directions),
    /// with impairments drawn from `seed`.
    pub fn spawn(
        listen: SocketAddr,
        upstream: SocketAddr,
        link: LinkConfig,
        seed: u64,
    ) -> io::Result<Relay> {
        let front = UdpSocket::bind(listen, &SocketOptions::default())?;
        let addr = front.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(RelayCounters::default());
        let mut worker = Worker {
            poll: Poll::new()?,
            front,
            upstream,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            net: Network::new(seed),
            link,
            counters: counters.clone(),
        };
        worker
            .poll
            .registry()
            .register(worker.front.source(), FRONT, Interest::READABLE)?;
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("surely-relay".into())
            .spawn(move || worker.run(&stop_flag))?;
        Ok(Relay {
            addr,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live counters.
    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Client {
    addr: SocketAddr,
    socket: UdpSocket,
}

struct Worker {
    poll: Poll,
    front: UdpSocket,
    upstream: SocketAddr,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    net: Network,
    link: LinkConfig,
    counters: Arc<RelayCounters>,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(64);
        let mut inb = RecvBatch::new(64, 65536);
        let mut out = SendBatch::new(64, 65536);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .net
                .next_delivery()
                .map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
            if self.poll.poll(&mut events, Some(wait)).is_err() {
                continue;
            }
            // Read everything from every socket (read until WouldBlock).
            self.read_front(&mut inb);
            for i in 0..self.clients.len() {
                self.read_client(i, &mut inb);
            }
            self.deliver(&mut out);
        }
    }

    fn read_front(&mut self, inb: &mut RecvBatch) {
        while let Ok(n) = self.front.recv_batch(inb) {
            if n == 0 {
                break;
            }
            let now = Instant::now();
            for k in 0..n {
                let Some((from, data)) = inb.get(k) else {
                    break;
                };
                let Some(idx) = self.client_index(from) else {
                    continue;
                };
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                self.net.send(now, 2 * idx, 2 * idx + 1, data);
            }
        }
    }

    fn read_client(&mut self, idx: usize, inb: &mut RecvBatch) {
        while let Ok(n) = self.clients[idx].socket.recv_batch(inb) {
            if n == 0 {
                break;
            }
            let now = Instant::now();
            for k in 0..n {
                let Some((from, data)) = inb.get(k) else {
                    break;
                };
                if from != self.upstream {
                    continue;
                }
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                self.net.send(now, 2 * idx + 1, 2 * idx, data);
            }
        }
    }

    /// The index of a client, creating its upstream socket on first sight.
    fn client_index(&mut self, from: SocketAddr) -> Option<usize> {
        if let Some(&i) = self.by_addr.get(&from) {
            return Some(i);
        }
        if self.clients.len() >= MAX_CLIENTS {
            return None;
        }
        let local: SocketAddr = if self.upstream.is_ipv6() {
            "[::]:0".parse().ok()?
        } else {
            "0.0.0.0:0".parse().ok()?
        };
        let mut socket = UdpSocket::bind(local, &SocketOptions::default()).ok()?;
        let idx = self.clients.len();
        self.poll
            .registry()
            .register(socket.source(), Token(idx), Interest::READABLE)
            .ok()?;
        self.net.set_links(2 * idx, 2 * idx + 1, self.link.clone());
        self.clients.push(Client { addr: from, socket });
        self.by_addr.insert(from, idx);
        Some(idx)
    }

    fn deliver(&mut self, out: &mut SendBatch) {
        let now = Instant::now();
        while let Some(d) = self.net.poll_delivery(now) {
            let idx = d.from.min(d.to) / 2;
            let to_server = d.to % 2 == 1;
            let Some(client) = self.clients.get(idx) else {
                continue;
            };
            let socket = if to_server {
                &client.socket
            } else {
                &self.front
            };
            let dest = if to_server {
                self.upstream
            } else {
                client.addr
            };
            if let Some(slot) = out.slot_mut() {
                let n = d.data.len().min(slot.len());
                slot[..n].copy_from_slice(&d.data[..n]);
                out.push(dest, n);
            }
            // One destination socket per batch: flush now (batches stay small and simple).
            let _ = socket.send_batch(out);
            if out.pending() > 0 {
                // Socket buffer full: the datagram is dropped, as a router would.
                let _ = socket.send_batch(out);
            }
            self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        record(&self.counters, self.net.stats());
    }
}

fn record(c: &RelayCounters, s: &NetStats) {
    let dropped = s.lost + s.dropped_partition + s.dropped_queue;
    c.dropped.store(dropped, Ordering::Relaxed);
    c.duplicated.store(s.duplicated, Ordering::Relaxed);
    c.corrupted.store(s.corrupted, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_both_ways_and_drops_what_the_link_loses() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let link = LinkConfig::perfect(Duration::from_millis(1)).loss(0.5);
        let relay = Relay::spawn(
            "127.0.0.1:0".parse().unwrap(),
            server.local_addr().unwrap(),
            link,
            3,
        )
        .unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        for i in 0..200u8 {
            client.send_to(&[i], relay.local_addr()).unwrap();
        }
        let mut got = 0;
        let mut buf = [0u8; 16];
        let mut reply_to = None;
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            assert_eq!(n, 1);
            got += 1;
            reply_to = Some(from);
        }
        assert!((60..140).contains(&got), "about half of 200 arrive: {got}");
        // Replies go back through the relay to the client.
        let back = reply_to.unwrap();
        for _ in 0..50 {
            server.send_to(b"r", back).unwrap();
        }
        let mut replies = 0;
        while let Ok((_, from)) = client.recv_from(&mut buf) {
            assert_eq!(from, relay.local_addr());
            replies += 1;
        }
        assert!(replies > 5 && replies < 50, "{replies}");
        let c = relay.counters();
        assert!(c.dropped.load(Ordering::Relaxed) > 0);
    }
}
