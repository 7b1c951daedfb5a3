//! A checker that drives two connections through a faulty simulated network and verifies
//! every delivery guarantee, in the manner of a Jepsen queue checker: every send and every
//! hand-over is recorded, and the history is checked against what each guarantee promises.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use surely::sim::{FaultPlan, Pair};
use surely::{
    AckMode, AckToken, Config, Event, Guarantee, MessageId, Rng, SendOptions, UndeliverableReason,
};

/// The origin of virtual time (only offsets from it matter).
#[allow(clippy::disallowed_methods)]
pub fn start() -> Instant {
    Instant::now()
}

/// Message `i`'s payload: `i` little-endian, then a pattern derived from `i`.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(8));
    p.extend_from_slice(&i.to_le_bytes());
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    p.truncate(len.max(8));
    p
}

/// Key of a message: its id space and id.
pub type Key = (bool, u64);

fn key(g: Guarantee, id: MessageId) -> Key {
    (g.is_reliable(), id.get())
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub index: u64,
    /// Position in acceptance order (the order `send` returned Ok).
    pub order: u64,
    pub opts: SendOptions,
    pub payload: Vec<u8>,
    pub outcome: Option<Result<(), UndeliverableReason>>,
}

/// What the workload looks like.
#[derive(Debug, Clone)]
pub struct Workload {
    pub messages: usize,
    /// Share of messages per guarantee: at-most-once, at-least-once, exactly-once.
    pub mix: [u32; 3],
    pub max_small: usize,
    /// Probability a message is fragmented (1-4 KiB), and that it is large (up to 40 KiB).
    pub p_medium: f64,
    pub p_large: f64,
    pub p_ordered: f64,
    pub channels: u8,
    /// Messages are sent over this period.
    pub spread: Duration,
    /// After-processing mode: probability the application rejects / drops the token.
    pub p_reject: f64,
    pub p_drop_token: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            messages: 120,
            mix: [1, 1, 2],
            max_small: 200,
            p_medium: 0.08,
            p_large: 0.01,
            p_ordered: 0.4,
            channels: 4,
            spread: Duration::from_secs(3),
            p_reject: 0.05,
            p_drop_token: 0.02,
        }
    }
}

/// The result of one run, for reporting.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub sent: u64,
    pub delivered: u64,
    pub undeliverable: u64,
    pub received_distinct: u64,
    pub duplicates_seen: u64,
    pub gaps: u64,
    pub virtual_secs: f64,
}

pub struct Checker {
    pub sent: BTreeMap<Key, Sent>,
    /// Hand-overs per message (first delivery order kept per channel).
    pub received: HashMap<Key, u32>,
    /// Reliable messages the application acknowledged after processing.
    pub app_acked: BTreeSet<Key>,
    /// Messages whose hand-over the application rejected at least once.
    pub rejected: BTreeSet<Key>,
    /// Last first-delivery send index per ordered channel.
    pub last_ordered: HashMap<u8, u64>,
    pub gaps_reported: u64,
    pub ack_mode: AckMode,
    pub errors: Vec<String>,
}

impl Checker {
    pub fn new(ack_mode: AckMode) -> Self {
        Checker {
            sent: BTreeMap::new(),
            received: HashMap::new(),
            app_acked: BTreeSet::new(),
            rejected: BTreeSet::new(),
            last_ordered: HashMap::new(),
            gaps_reported: 0,
            ack_mode,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, msg: String) {
        if self.errors.len() < 20 {
            self.errors.push(msg);
        }
    }

    /// A sender-side event.
    pub fn on_sender_event(&mut self, ev: Event) {
        match ev {
            Event::Delivered { id, guarantee } => {
                let k = key(guarantee, id);
                let Some(s) = self.sent.get_mut(&k) else {
                    return self.fail(format!("Delivered for unknown {k:?}"));
                };
                if s.outcome.is_some() {
                    return self.fail(format!("second outcome for {k:?}"));
                }
                s.outcome = Some(Ok(()));
                let n = self.received.get(&k).copied().unwrap_or(0);
                if n == 0 {
                    self.fail(format!("{k:?} reported Delivered but never handed over"));
                }
                if guarantee.is_reliable()
                    && self.ack_mode == AckMode::AfterProcessing
                    && !self.app_acked.contains(&k)
                {
                    self.fail(format!("{k:?} Delivered but not acked by the application"));
                }
            }
            Event::Undeliverable {
                id,
                guarantee,
                reason,
                payload,
            } => {
                let k = key(guarantee, id);
                let Some(s) = self.sent.get_mut(&k) else {
                    return self.fail(format!("Undeliverable for unknown {k:?}"));
                };
                if s.outcome.is_some() {
                    return self.fail(format!("second outcome for {k:?}"));
                }
                if payload != s.payload {
                    return self.fail(format!("Undeliverable {k:?} returned another payload"));
                }
                s.outcome = Some(Err(reason));
            }
            Event::Message(_) => self.fail("the sender received a message".into()),
            Event::Lost { .. } => self.fail("the sender was told of receive gaps".into()),
            Event::Closed { .. } => {}
            _ => {}
        }
    }

    /// A receiver-side message; returns the token if the application holds it for later.
    pub fn on_message(&mut self, m: surely::Received) -> Option<AckToken> {
        let k = key(m.guarantee, m.id);
        let Some(s) = self.sent.get(&k) else {
            self.fail(format!("{k:?} delivered but never sent"));
            return m.token;
        };
        let same_payload = m.payload == s.payload;
        let same_meta = m.guarantee == s.opts.guarantee && m.channel == s.opts.channel;
        let index = s.index;
        let order = s.order;
        let ordered = s.opts.ordered;
        let channel = s.opts.channel;
        let g = s.opts.guarantee;
        if !same_payload {
            self.fail(format!("{k:?} (message {index}) payload differs"));
        }
        if !same_meta {
            self.fail(format!("{k:?} metadata differs"));
        }
        let n = self.received.entry(k).or_insert(0);
        *n += 1;
        let n = *n;
        if n > 1 && g != Guarantee::AtLeastOnce && !self.rejected.contains(&k) {
            self.fail(format!("{g} message {k:?} handed over {n} times"));
        }
        if ordered && n == 1 {
            let last = self.last_ordered.get(&channel).copied();
            if last.is_some_and(|l| order < l) {
                self.fail(format!(
                    "ordered channel {channel}: message {index} (sent #{order}) after #{last:?}"
                ));
            }
            self.last_ordered.insert(channel, order);
        }
        if ordered && !m.ordered {
            self.fail(format!("{k:?} was sent ordered but delivered unordered"));
        }
        m.token
    }

    /// Checks the final history.
    /// `gaps_complete`: the receiver lived to hear every at-most-once id settled, so the gaps
    /// it reported must add up exactly to what it never got.
    pub fn check_final(&mut self, require_outcomes: bool, gaps_complete: bool) {
        let mut amo_sent = 0;
        let mut amo_delivered = 0;
        let entries: Vec<(Key, Sent)> = self.sent.iter().map(|(k, s)| (*k, s.clone())).collect();
        for (k, s) in entries {
            let n = self.received.get(&k).copied().unwrap_or(0);
            match s.outcome {
                None if require_outcomes => self.fail(format!("{k:?} has no outcome")),
                Some(Ok(())) if n == 0 => self.fail(format!("{k:?} Delivered, never received")),
                _ => {}
            }
            match s.opts.guarantee {
                Guarantee::AtMostOnce => {
                    amo_sent += 1;
                    if n > 0 {
                        amo_delivered += 1;
                    }
                }
                Guarantee::ExactlyOnce if n > 1 && !self.rejected.contains(&k) => {
                    self.fail(format!("exactly-once {k:?} handed over {n} times"))
                }
                _ => {}
            }
        }
        if gaps_complete && amo_delivered + self.gaps_reported != amo_sent {
            self.fail(format!(
                "at-most-once: {amo_sent} sent, {amo_delivered} delivered, {} gaps reported",
                self.gaps_reported
            ));
        }
        if amo_delivered + self.gaps_reported > amo_sent {
            self.fail("at-most-once: gaps over-reported".into());
        }
    }
}

/// Draws a configuration for `seed`.
pub fn config_for(seed: u64) -> Config {
    let mut r = Rng::new(seed ^ 0xC0FF_EE00);
    let mut c = Config::default()
        .rng_seed(seed)
        .ack_mode(if r.chance(0.3) {
            AckMode::AfterProcessing
        } else {
            AckMode::OnReceipt
        })
        .max_datagram_size([1200, 1200, 512, 1472][r.below(4) as usize])
        .max_message_size(256 << 10);
    if r.chance(0.3) {
        c = c.default_deadline(Some(Duration::from_millis(1500 + r.below(3000))));
    }
    if r.chance(0.2) {
        c = c.default_max_retransmits(r.below(6) as u32);
    }
    if r.chance(0.2) {
        c = c.window(256).amo_window(64);
    }
    match r.below(10) {
        0 => c = c.congestion(surely::CongestionControl::None),
        1 | 2 => c = c.congestion(surely::CongestionControl::LossTolerant),
        _ => {}
    }
    // Start some runs just below the wrap points of the wire encodings and of the id space.
    let high = (1u64 << 62) - (1 << 32) - 1000;
    match r.below(10) {
        0 => {
            c = c
                .initial_message_id((1 << 16) - 30)
                .initial_packet_number((1 << 16) - 20)
        }
        1 => {
            c = c
                .initial_message_id((1 << 32) - 30)
                .initial_packet_number((1 << 32) - 20)
        }
        2 => c = c.initial_message_id(high).initial_packet_number(high + 5),
        _ => {}
    }
    // Some runs on a receive buffer with little room besides the largest message (the
    // workload's large messages go up to 40 KiB), where ordered hold-back, reassembly and
    // unpolled messages compete for room.
    if r.chance(0.15) {
        let largest = 48 << 10;
        let minimum = largest + c.max_fragments as usize + 64;
        c = c
            .max_message_size(largest)
            .recv_buffer_bytes(minimum + r.below(96 << 10) as usize);
    }
    c
}

/// Runs one seed with faults drawn from it; returns the summary, or the checker's errors.
pub fn run_seed(seed: u64, workload: &Workload, faults: bool) -> Result<Summary, Vec<String>> {
    let _ = env_logger::builder().is_test(true).try_init();
    if std::env::var_os("SURELY_PROGRESS").is_some() {
        eprintln!("seed {seed}");
    }
    let config = Arc::new(config_for(seed));
    let t0 = start();
    let mut pair = Pair::new(config.clone(), config.clone(), seed, t0).expect("valid config");
    let horizon = Duration::from_secs(8);
    if faults {
        let plan = FaultPlan::draw(seed, horizon, Duration::from_secs(2));
        plan.apply(&mut pair.net, 0, 1, t0);
        pair.net.heal_at(t0 + horizon);
    }
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut checker = Checker::new(config.ack_mode);
    // Schedule sends.
    let mut schedule: Vec<(Duration, u64)> = (0..workload.messages as u64)
        .map(|i| {
            (
                Duration::from_micros(rng.below(workload.spread.as_micros() as u64)),
                i,
            )
        })
        .collect();
    schedule.sort();
    let mut next_send = 0;
    let mut held_tokens: Vec<(Instant, AckToken)> = Vec::new();
    let total: u32 = workload.mix.iter().sum();
    let liveness = t0 + horizon + Duration::from_secs(40);
    let mut steps = 0u64;
    let mut retry_sends: Vec<(u64, SendOptions, Vec<u8>)> = Vec::new();
    loop {
        steps += 1;
        if steps > 3_000_000 || (steps % 100_000 == 0 && pair.net.in_flight() > 1_000_000) {
            checker.fail(format!(
                "step limit reached at {:?}: a timer {:?} b timer {:?} net {:?} a {:?} b {:?}",
                pair.now - t0,
                pair.a.poll_timeout().map(|t| t - t0),
                pair.b.poll_timeout().map(|t| t - t0),
                pair.net.next_delivery().map(|t| t - t0),
                pair.a,
                pair.b
            ));
            break;
        }
        // Application: sends due now.
        while next_send < schedule.len() && t0 + schedule[next_send].0 <= pair.now {
            let i = schedule[next_send].1;
            next_send += 1;
            let pick = rng.below(u64::from(total)) as u32;
            let g = if pick < workload.mix[0] {
                Guarantee::AtMostOnce
            } else if pick < workload.mix[0] + workload.mix[1] {
                Guarantee::AtLeastOnce
            } else {
                Guarantee::ExactlyOnce
            };
            let len = if rng.chance(workload.p_large) {
                8 + rng.below(40_000) as usize
            } else if rng.chance(workload.p_medium) {
                1000 + rng.below(3000) as usize
            } else {
                rng.below(workload.max_small as u64 + 1) as usize
            };
            let ordered = g.is_reliable() && rng.chance(workload.p_ordered);
            let opts = SendOptions::new(g)
                .channel(rng.below(u64::from(workload.channels)) as u8)
                .ordered(ordered);
            let p = payload(i, len);
            retry_sends.push((i, opts, p));
        }
        let mut still = Vec::new();
        for (i, opts, p) in retry_sends.drain(..) {
            match pair.a.send(pair.now, &p, opts) {
                Ok(id) => {
                    checker.sent.insert(
                        key(opts.guarantee, id),
                        Sent {
                            index: i,
                            order: checker.sent.len() as u64,
                            opts,
                            payload: p,
                            outcome: None,
                        },
                    );
                }
                Err(surely::SendError::Backpressure) => still.push((i, opts, p)),
                // The connection died (idle timeout during an outage): not accepted, no outcome.
                Err(surely::SendError::Closed) if pair.a.is_closed() => {}
                Err(e) => checker.fail(format!("send failed: {e}")),
            }
        }
        retry_sends = still;
        // Application: processing done for held tokens.
        let now = pair.now;
        let mut keep = Vec::new();
        for (due, token) in held_tokens.drain(..) {
            if due <= now {
                let k = (true, token.id().get());
                if rng.chance(workload.p_reject) {
                    checker.rejected.insert(k);
                    pair.b.reject(now, token).unwrap();
                } else if rng.chance(workload.p_drop_token) {
                    checker.rejected.insert(k);
                    drop(token);
                } else {
                    checker.app_acked.insert(k);
                    pair.b.ack(now, token).unwrap();
                }
            } else {
                keep.push((due, token));
            }
        }
        held_tokens = keep;
        // Events.
        while let Some(ev) = pair.b.poll_event() {
            match ev {
                Event::Message(m) => {
                    if let Some(token) = checker.on_message(m) {
                        let delay = Duration::from_micros(rng.below(20_000));
                        held_tokens.push((now + delay, token));
                    }
                }
                Event::Lost { count } => checker.gaps_reported += count,
                Event::Closed { .. } => {}
                other => checker.fail(format!("receiver got {other:?}")),
            }
        }
        while let Some(ev) = pair.a.poll_event() {
            checker.on_sender_event(ev);
        }
        // Bounds.
        if pair.b.receive_buffered_bytes() > config.recv_buffer_bytes {
            checker.fail("receive buffer over its bound".into());
        }
        if pair.a.pending_bytes() > config.send_buffer_bytes
            || pair.a.pending_messages() > config.max_pending_messages
        {
            checker.fail("send buffer over its bound".into());
        }
        if !checker.errors.is_empty() {
            break;
        }
        let all_sent = next_send == schedule.len() && retry_sends.is_empty();
        let all_outcomes = all_sent && checker.sent.values().all(|s| s.outcome.is_some());
        let amo_settled = pair.b.is_closed() || {
            let amo_sent = checker.sent.keys().filter(|k| !k.0).count() as u64;
            let amo_recv = checker.received.keys().filter(|k| !k.0).count() as u64;
            amo_recv + checker.gaps_reported == amo_sent
        };
        if all_outcomes && amo_settled && held_tokens.is_empty() {
            break;
        }
        // Advance: to the next network/timer deadline, a scheduled send or a token.
        let mut limit = liveness;
        if next_send < schedule.len() {
            limit = limit.min(t0 + schedule[next_send].0);
        }
        if let Some(t) = held_tokens.iter().map(|(t, _)| *t).min() {
            limit = limit.min(t);
        }
        if !retry_sends.is_empty() {
            limit = limit.min(pair.now + Duration::from_millis(1));
        }
        if !pair.step(limit) {
            pair.now = pair.now.max(limit);
        }
        if pair.now >= liveness {
            break;
        }
    }
    let alive = !pair.a.is_closed() && !pair.b.is_closed();
    checker.check_final(true, alive);
    if !checker.errors.is_empty() {
        let mut e = checker.errors;
        e.push(format!(
            "seed {seed}: at {:?} a {:?} (next timer {:?}) b {:?} (next timer {:?}), held tokens {}, unsent {}",
            pair.now - t0,
            pair.a,
            pair.a.poll_timeout().map(|t| t - t0),
            pair.b,
            pair.b.poll_timeout().map(|t| t - t0),
            held_tokens.len(),
            retry_sends.len() + schedule.len() - next_send,
        ));
        e.push(format!(
            "seed {seed}: config {:?}; a {:?} b {:?}; net {:?}",
            config,
            pair.a.stats(),
            pair.b.stats(),
            pair.net.stats()
        ));
        return Err(e);
    }
    let stats = pair.a.stats();
    Ok(Summary {
        sent: checker.sent.len() as u64,
        delivered: stats.delivered,
        undeliverable: stats.undeliverable,
        received_distinct: checker.received.len() as u64,
        duplicates_seen: checker.received.values().map(|n| u64::from(n - 1)).sum(),
        gaps: checker.gaps_reported,
        virtual_secs: (pair.now - t0).as_secs_f64(),
    })
}
