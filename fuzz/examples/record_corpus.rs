//! Writes the seed corpus from real traffic: a simulated transfer between two connections
//! (a few hundred messages of every guarantee and many sizes, with loss, duplication and
//! reordering) and a real endpoint handshake.
//!
//! ```text
//! cd fuzz && cargo run --release --example record_corpus
//! ```
//!
//! It replaces `corpus/{decode,connection,endpoint}/` with a few hundred small files: one per
//! distinct kind of datagram (the sequence of its frame types), smallest first, so that the
//! committed corpus stays at tens of kilobytes. Deterministic: the same files every run.
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use surely::endpoint::{Endpoint, EndpointConfig};
use surely::sim::{LinkConfig, NODE_A, NODE_B, Pair};
use surely::wire::{self, Crc32, Frame};
use surely::{Guarantee, SendOptions};
use surely_fuzz::checks::{harness_config, op};

/// Configuration selectors (first byte of a connection input) the transfers run with.
const SELECTORS: [u8; 3] = [0, 8 | 16, 1 | 4];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut decode = Corpus::new(&root.join("decode"), 60);
    let mut connection = Corpus::new(&root.join("connection"), 50);
    for (i, &sel) in SELECTORS.iter().enumerate() {
        for (from_a, d) in transfer(sel, 40 + i as u64) {
            let kind = kind_of(&d);
            decode.offer(&format!("{}-{kind}", if from_a { "ab" } else { "ba" }), &d);
            if from_a {
                // As the connection harness's input: the selector, then one INJECT.
                let mut input = vec![sel, op::INJECT, 0];
                input.extend_from_slice(&(d.len() as u16).to_be_bytes());
                input.extend_from_slice(&d);
                connection.offer(&format!("{sel}-{kind}"), &input);
            }
        }
    }
    for (name, input) in scripted() {
        connection.force(&name, &input);
    }
    let mut endpoint = Corpus::new(&root.join("endpoint"), 40);
    for (name, d) in handshake(&mut endpoint) {
        decode.force(&name, &d);
    }
    for c in [&decode, &connection, &endpoint] {
        c.write();
    }
}

/// Files of one target's corpus, at most one per kind (the smallest).
struct Corpus {
    dir: std::path::PathBuf,
    max: usize,
    files: BTreeMap<String, Vec<u8>>,
}

impl Corpus {
    fn new(dir: &Path, max: usize) -> Self {
        Corpus {
            dir: dir.to_owned(),
            max,
            files: BTreeMap::new(),
        }
    }

    fn offer(&mut self, kind: &str, data: &[u8]) {
        match self.files.get(kind) {
            Some(old) if old.len() <= data.len() => {}
            // MESSAGES frames come with bursts (from B, which has no other new message waiting
            // then), after the mixed traffic filled the corpus:
            // a few more places for them.
            _ if self.files.len() >= self.max + 10 * usize::from(kind.contains("msgs"))
                && !self.files.contains_key(kind) => {}
            _ => {
                self.files.insert(kind.to_owned(), data.to_vec());
            }
        }
    }

    fn force(&mut self, name: &str, data: &[u8]) {
        self.files.insert(name.to_owned(), data.to_vec());
    }

    fn write(&self) {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(&self.dir).unwrap();
        let mut total = 0;
        for (i, (kind, data)) in self.files.iter().enumerate() {
            let name: String = kind
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(60)
                .collect();
            fs::write(self.dir.join(format!("{i:03}-{name}")), data).unwrap();
            total += data.len();
        }
        println!(
            "{}: {} files, {total} bytes",
            self.dir.display(),
            self.files.len()
        );
    }
}

/// A datagram's kind: its frame types in order (runs collapsed).
fn kind_of(d: &[u8]) -> String {
    let Ok((_, payload)) = wire::open(d, &Crc32) else {
        return "bad".into();
    };
    let mut names: Vec<&str> = Vec::new();
    for f in wire::frames(payload) {
        let name = match f {
            Ok(Frame::Padding { .. }) => "pad",
            Ok(Frame::Ping) => "ping",
            Ok(Frame::Ack(a)) if a.range_count() > 1 => "ackN",
            Ok(Frame::Ack(_)) => "ack",
            Ok(Frame::MsgAck(m)) if m.range_count() > 0 => "maN",
            Ok(Frame::MsgAck(_)) => "ma",
            Ok(Frame::Message(m)) => {
                match (m.guarantee, m.chan_seq.is_some(), m.fragment.is_some()) {
                    (Guarantee::AtMostOnce, _, false) => "amo",
                    (Guarantee::AtMostOnce, _, true) => "amoF",
                    (_, false, false) => "rel",
                    (_, true, false) => "ord",
                    (_, false, true) => "relF",
                    (_, true, true) => "ordF",
                }
            }
            Ok(Frame::Forward(_)) => "fwd",
            Ok(Frame::Reject(_)) => "rej",
            Ok(Frame::AmoFloor { .. }) => "floor",
            Ok(Frame::Close(_)) => "close",
            Ok(Frame::Messages(_)) => "msgs",
            Err(_) => "err",
        };
        if names.last() != Some(&name) {
            names.push(name);
        }
    }
    names.join("-")
}

/// A lossy transfer between two connections with the harness's configuration `sel`; returns
/// every datagram sent (true: from A to B).
fn transfer(sel: u8, seed: u64) -> Vec<(bool, Vec<u8>)> {
    let start = Instant::now();
    let config = Arc::new(harness_config(sel));
    let mut pair = Pair::new(config.clone(), config.clone(), seed, start).unwrap();
    let link = LinkConfig::perfect(Duration::from_millis(5))
        .jitter(Duration::from_millis(2))
        .loss(0.05)
        .duplicate(0.02)
        .reorder(0.05, Duration::from_millis(5));
    pair.net.set_links(NODE_A, NODE_B, link);
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    let end = start + Duration::from_secs(30);
    let mut sent = 0u32;
    let max = config.max_message_size;
    while pair.now < end {
        // Keep up to 20 messages outstanding, of every guarantee and size, both ways (and
        // each burst of six whole).
        while sent < 300
            && (pair.a.pending_messages() + pair.b.pending_messages() < 20 || sent % 30 > 24)
        {
            let mut g = [
                Guarantee::AtMostOnce,
                Guarantee::AtLeastOnce,
                Guarantee::ExactlyOnce,
            ][(sent % 3) as usize];
            let mut len = [8usize, 40, 300, 1100, 1500, 3000][(sent / 3 % 6) as usize].min(max);
            let mut o = SendOptions::new(g).channel((sent % 4) as u8);
            o = o.ordered(g.is_reliable() && sent % 5 == 0);
            let mut conn = if sent % 7 == 3 {
                &mut pair.b
            } else {
                &mut pair.a
            };
            if sent % 30 >= 24 {
                // A burst of one kind: consecutive ids that share a MESSAGES frame.
                g = [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce][(sent / 30 % 2) as usize];
                len = 40;
                o = SendOptions::new(g).channel(1).ordered(sent / 60 % 2 == 0);
                conn = &mut pair.b;
            }
            if conn.send(pair.now, &vec![sent as u8; len], o).is_err() {
                break;
            }
            if sent % 50 == 49 {
                pair.a.close(pair.now);
            }
            sent += 1;
        }
        for (from_a, conn) in [(true, &mut pair.a), (false, &mut pair.b)] {
            while let Some(n) = conn.poll_transmit(pair.now, &mut buf) {
                out.push((from_a, buf[..n].to_vec()));
                let (from, to) = if from_a {
                    (NODE_A, NODE_B)
                } else {
                    (NODE_B, NODE_A)
                };
                pair.net.send(pair.now, from, to, &buf[..n]);
            }
        }
        while pair.a.poll_event().is_some() {}
        while let Some(ev) = pair.b.poll_event() {
            if let surely::Event::Message(mut m) = ev {
                if let Some(t) = m.token.take() {
                    let _ = pair.b.ack(pair.now, t);
                }
            }
        }
        if !pair.step(end) {
            break;
        }
    }
    out
}

/// Short operation sequences that exercise the harness's operations on a live transfer.
fn scripted() -> Vec<(String, Vec<u8>)> {
    let exchange_rounds = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| [op::EXCHANGE, 0, op::ADVANCE, 0x80, 0])
            .collect()
    };
    let mut out = Vec::new();
    for sel in [0u8, 1, 8, 9, 16, 32, 64, 128, 2, 4, 6] {
        let mut v = vec![sel];
        for (i, g) in [0u8, 1, 2, 1 | 4, 2 | 4, 8].iter().enumerate() {
            v.extend_from_slice(&[op::SEND_A, *g, 0, 20 + i as u8 * 60]);
            v.extend_from_slice(&[op::SEND_B, *g, 0x06, 0x00]);
        }
        v.extend(exchange_rounds(3));
        v.extend_from_slice(&[op::ACK, op::REJECT, op::DROP_TOKEN, op::MUTATE, 0, 30, 0xff]);
        v.extend_from_slice(&[op::REPLAY, 0, op::ADVANCE, 0x00, 0x64]);
        v.extend(exchange_rounds(2));
        v.extend_from_slice(&[op::CLOSE_B, op::EXCHANGE, 0, op::ADVANCE, 0xff, 0xff]);
        out.push((format!("script-{sel}"), v));
    }
    // Bursts of one kind, which A sends as MESSAGES frames: exactly-once, then ordered.
    for sel in [0u8, 1, 8] {
        let mut v = vec![sel];
        for g in [2u8, 2 | 4] {
            for _ in 0..6 {
                v.extend_from_slice(&[op::SEND_A, g, 0, 20]);
            }
            v.extend(exchange_rounds(2));
        }
        out.push((format!("script-burst-{sel}"), v));
    }
    out
}

/// A real handshake between a client and a server endpoint, then a little DATA. Writes the
/// endpoint target's inputs (see its `read_op`) into `corpus` and returns the datagrams.
fn handshake(corpus: &mut Corpus) -> Vec<(String, Vec<u8>)> {
    let now = Instant::now();
    let server_addr: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let client_addr: SocketAddr = "10.0.0.0:4000".parse().unwrap(); // pool address 0
    let mut server = Endpoint::new(EndpointConfig::default(), [1; 16], now).unwrap();
    let mut client = Endpoint::new(
        EndpointConfig::default().accept_incoming(false).rng_seed(3),
        [2; 16],
        now,
    )
    .unwrap();
    let handle = client.connect(now, server_addr).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut datagrams = Vec::new();
    let mut client_data = Vec::new();
    for round in 0..8 {
        while let Some((_, n)) = client.poll_transmit(now, &mut buf) {
            let d = buf[..n].to_vec();
            if d[1] == 1 {
                client_data.push(d.clone());
            }
            datagrams.push((format!("hs-c{round}-{}", d[1]), d.clone()));
            server.handle_datagram(now, client_addr, &d);
        }
        while let Some((_, n)) = server.poll_transmit(now, &mut buf) {
            let d = buf[..n].to_vec();
            datagrams.push((format!("hs-s{round}-{}", d[1]), d.clone()));
            client.handle_datagram(now, server_addr, &d);
        }
        while client.poll_event().is_some() {}
        while server.poll_event().is_some() {}
        if let Some(c) = client.connection_mut(handle) {
            let _ = c.send(now, b"hello", Guarantee::ExactlyOnce);
        }
    }
    // One RAW operation per datagram the client sent (address = pool 0).
    for (name, d) in &datagrams {
        if name.starts_with("hs-c") {
            let mut v = vec![0u8, 0];
            v.extend_from_slice(&(d.len() as u16).to_be_bytes());
            v.extend_from_slice(d);
            corpus.force(&format!("raw-{name}"), &v);
        }
    }
    // A full handshake through the harness: INITIAL, INITIAL echoing the cookie, DATA with
    // the frames of the client's DATA packets, time, an application send and close.
    let mut v = vec![
        1u8, 0, 7, 0, 0x04, 0xb0, 0, 0, 1u8, 0, 7, 0, 0x04, 0xb0, 2, 0,
    ];
    for (i, d) in client_data.iter().take(3).enumerate() {
        let frames = &d[wire::HEADER_LEN..d.len() - 4];
        v.extend_from_slice(&[2, 0, 0, 0, i as u8, 0]);
        v.extend_from_slice(&(frames.len() as u16).to_be_bytes());
        v.extend_from_slice(frames);
    }
    v.extend_from_slice(&[5, 0, 0, 100, 3, 0, 10, 4, 0, 3, 0x0b, 0xb8]);
    corpus.force("script-handshake", &v);
    // INITIALs from eight addresses, some of them forged cookies, then time passing.
    let mut v = Vec::new();
    for i in 0..8u8 {
        if i % 2 == 0 {
            v.extend_from_slice(&[1, i, i, 0, 0x04, 0xb0, 0, 0]);
        } else {
            v.extend_from_slice(&[1, i, i, 0, 0x04, 0xb0, 4, 3, 1, 2, 3, 0]);
        }
    }
    v.extend_from_slice(&[1, 2, 2, 0, 0x04, 0xb0, 2, 0]);
    v.extend_from_slice(&[3, 0x0b, 0xb8, 1, 0, 0, 0, 0x04, 0xb0, 2, 0]);
    corpus.force("script-initials", &v);
    datagrams
}
