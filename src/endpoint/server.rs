//! The server side of the handshake: answering INITIALs without keeping state until the peer
//! proves its address, then making the connection.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Endpoint, EndpointEvent, Entry, Open, Outgoing};
use crate::connection::Connection;
use crate::wire::{RefuseReason, TransportParams};

/// The fields of a received INITIAL that an answer needs.
pub(super) struct Initial {
    pub(super) from: SocketAddr,
    pub(super) len: usize,
    pub(super) attempt: u32,
    pub(super) client_cid: u64,
    pub(super) params: TransportParams,
}

impl Endpoint {
    pub(super) fn on_initial(&mut self, now: Instant, i: Initial, cookie: Option<&[u8]>) {
        if let Some(&idx) = self.by_peer.get(&(i.from, i.client_cid)) {
            // The ACCEPT was lost (or this is a late copy): the address was validated when the
            // connection was made, so answer again.
            if let Some(Entry::Open(o)) = self.entry_mut(idx) {
                let accept = Outgoing::Accept {
                    to: i.from,
                    client_cid: i.client_cid,
                    attempt: i.attempt,
                    server_cid: o.conn.local_cid(),
                    max_datagram_size: o.conn.config().max_datagram_size as u64,
                };
                self.queue(accept);
            }
            return;
        }
        self.stats.bytes_received_unvalidated += i.len as u64;
        if !self.config.accept_incoming {
            self.refuse(now, &i, RefuseReason::NotAccepting, Some(i.len));
            return;
        }
        if i.params.initial_packet_number != self.transport.initial_packet_number
            || i.params.initial_message_id != self.transport.initial_message_id
        {
            self.refuse(now, &i, RefuseReason::Incompatible, Some(i.len));
            return;
        }
        let validated = match cookie {
            None => false,
            Some(c) => {
                let ok = self.cookies.verify(now, i.from, i.client_cid, c).is_ok();
                if !ok {
                    self.stats.cookies_rejected += 1;
                }
                ok
            }
        };
        if !validated {
            if self.is_full() {
                self.refuse(now, &i, RefuseReason::ServerFull, Some(i.len));
                return;
            }
            if !self.limits.admit_handshake(now) {
                self.stats.dropped_rate_limited += 1;
                return;
            }
            let retry = Outgoing::Retry {
                to: i.from,
                client_cid: i.client_cid,
                attempt: i.attempt,
                cookie: self.cookies.issue(now, i.from, i.client_cid),
                budget: i.len,
            };
            if self.queue(retry) {
                self.stats.handshakes_started += 1;
            }
            return;
        }
        // The peer proved it receives at its address: from here on it gets state.
        if self.is_full() {
            self.refuse(now, &i, RefuseReason::ServerFull, None);
            return;
        }
        let mds = self.negotiated_size(i.params.max_datagram_size);
        let Some(config) = self.config_for(mds) else {
            self.refuse(now, &i, RefuseReason::Incompatible, None);
            return;
        };
        let Some(server_cid) = self.fresh_cid() else {
            self.refuse(now, &i, RefuseReason::ServerFull, None);
            return;
        };
        let Ok(conn) = Connection::new(config, server_cid, i.client_cid, now) else {
            self.refuse(now, &i, RefuseReason::Incompatible, None);
            return;
        };
        let open = Open {
            conn: Box::new(conn),
            remote: i.from,
            client_cid: Some(i.client_cid),
            close_reason: None,
        };
        let Some(idx) = self.alloc(Entry::Open(open)) else {
            self.refuse(now, &i, RefuseReason::ServerFull, None);
            return;
        };
        self.open += 1;
        self.by_cid.insert(server_cid, idx);
        self.by_peer.insert((i.from, i.client_cid), idx);
        self.stats.handshakes_completed += 1;
        self.queue(Outgoing::Accept {
            to: i.from,
            client_cid: i.client_cid,
            attempt: i.attempt,
            server_cid,
            max_datagram_size: mds as u64,
        });
        let handle = self.handle_of(idx);
        self.events.push_back(EndpointEvent::NewConnection {
            handle,
            remote: i.from,
        });
        self.enqueue(idx, true, true);
        self.refresh_timer(idx);
    }

    /// Answers REFUSE; `budget` is set when the address is not validated (then the answer is
    /// also subject to the handshake rate limit).
    fn refuse(&mut self, now: Instant, i: &Initial, reason: RefuseReason, budget: Option<usize>) {
        if budget.is_some() && !self.limits.admit_handshake(now) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        let refuse = Outgoing::Refuse {
            to: i.from,
            client_cid: i.client_cid,
            attempt: i.attempt,
            reason,
            budget,
        };
        if !self.queue(refuse) {
            return;
        }
        self.stats.handshakes_refused += 1;
        if self.limits.admit_refused_event(self.refused_events) {
            self.refused_events += 1;
            self.events.push_back(EndpointEvent::Refused {
                remote: i.from,
                reason,
            });
        } else {
            self.stats.events_dropped += 1;
        }
    }
}
