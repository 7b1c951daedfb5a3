//! The client side of the handshake: sending INITIAL (again), following RETRY, and the
//! outcome (ACCEPT, REFUSE or giving up).

use std::net::SocketAddr;
use std::time::Instant;

use super::{ConnectFailReason, Endpoint, EndpointEvent, Entry, Open, later};
use crate::connection::Connection;
use crate::limits::EndpointLimits;
use crate::wire::{MAX_COOKIE_LEN, RefuseReason};

impl Endpoint {
    pub(super) fn on_retry(
        &mut self,
        now: Instant,
        from: SocketAddr,
        client_cid: u64,
        cookie: &[u8],
    ) {
        let Some(idx) = self.connecting_from(from, client_cid) else {
            return;
        };
        let backoff = self.backoff_for(idx);
        let Some(Entry::Connecting(c)) = self.entry_mut(idx) else {
            return;
        };
        if !EndpointLimits::admit_retry(c.retries_followed) {
            self.stats.handshake_packets_ignored += 1;
            return;
        }
        let mut stored = [0u8; MAX_COOKIE_LEN];
        let n = cookie.len().min(MAX_COOKIE_LEN);
        stored[..n].copy_from_slice(&cookie[..n]);
        c.cookie = Some((stored, n));
        c.retries_followed += 1;
        c.initial_due = true;
        c.deadline = later(now, backoff);
        self.enqueue(idx, true, false);
        self.refresh_timer(idx);
    }

    pub(super) fn on_accept(
        &mut self,
        now: Instant,
        from: SocketAddr,
        client_cid: u64,
        server_cid: u64,
        max_datagram_size: u64,
    ) {
        let Some(idx) = self.connecting_from(from, client_cid) else {
            return;
        };
        let mds = self.negotiated_size(max_datagram_size);
        let Some(config) = self.config_for(mds) else {
            self.fail(idx, ConnectFailReason::Incompatible);
            return;
        };
        let Ok(conn) = Connection::new(config, client_cid, server_cid, now) else {
            self.fail(idx, ConnectFailReason::Incompatible);
            return;
        };
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        slot.entry = Some(Entry::Open(Open {
            conn: Box::new(conn),
            remote: from,
            client_cid: None,
            close_reason: None,
        }));
        self.connecting -= 1;
        self.open += 1;
        self.stats.handshakes_completed += 1;
        let handle = self.handle_of(idx);
        self.events.push_back(EndpointEvent::Connected { handle });
        self.enqueue(idx, true, true);
        self.refresh_timer(idx);
    }

    pub(super) fn on_refuse(&mut self, from: SocketAddr, client_cid: u64, reason: RefuseReason) {
        if let Some(idx) = self.connecting_from(from, client_cid) {
            self.fail(idx, ConnectFailReason::Refused(reason));
        }
    }

    pub(super) fn on_handshake_timeout(&mut self, now: Instant, idx: u32) {
        let retries = self.config.handshake_retries;
        let Some(Entry::Connecting(c)) = self.entry_mut(idx) else {
            return;
        };
        if c.deadline > now {
            self.refresh_timer(idx);
            return;
        }
        if c.timeouts >= retries {
            self.fail(idx, ConnectFailReason::TimedOut);
            return;
        }
        c.timeouts += 1;
        c.initial_due = true;
        let timeouts = c.timeouts;
        let deadline = later(now, self.backoff(timeouts));
        if let Some(Entry::Connecting(c)) = self.entry_mut(idx) {
            c.deadline = deadline;
        }
        self.enqueue(idx, true, false);
        self.refresh_timer(idx);
    }

    /// The outgoing handshake that `client_cid` names, if the answer comes from its server.
    /// Counts the answer as ignored or unknown otherwise.
    fn connecting_from(&mut self, from: SocketAddr, client_cid: u64) -> Option<u32> {
        let Some(&idx) = self.by_cid.get(&client_cid) else {
            self.stats.dropped_unknown_cid += 1;
            return None;
        };
        match self.entry_mut(idx) {
            Some(Entry::Connecting(c)) if c.remote == from => Some(idx),
            _ => {
                self.stats.handshake_packets_ignored += 1;
                None
            }
        }
    }

    pub(super) fn fail(&mut self, idx: u32, reason: ConnectFailReason) {
        let handle = self.handle_of(idx);
        self.free_slot(idx);
        self.stats.handshakes_failed += 1;
        self.events
            .push_back(EndpointEvent::ConnectFailed { handle, reason });
    }
}
