//! A nonblocking UDP socket with batched I/O: `recvmmsg`/`sendmmsg` on Linux, a loop of
//! `recv_from`/`send_to` elsewhere. The only code in the crate that calls into the OS.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Kernel receive buffer size in bytes (`SO_RCVBUF`); `None` keeps the system default.
    pub recv_buffer: Option<usize>,
    /// Kernel send buffer size in bytes (`SO_SNDBUF`); `None` keeps the system default.
    pub send_buffer: Option<usize>,
    /// For an IPv6 address: accept IPv4-mapped peers too (`IPV6_V6ONLY` off).
    pub dual_stack: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            recv_buffer: Some(4 << 20),
            send_buffer: Some(4 << 20),
            dual_stack: false,
        }
    }
}

/// A nonblocking UDP socket registered with mio.
#[derive(Debug)]
pub struct UdpSocket {
    io: mio::net::UdpSocket,
    local: SocketAddr,
}

impl UdpSocket {
    /// Creates, tunes and binds a nonblocking socket. Buffer sizes the kernel refuses are not
    /// an error (it clamps them); a failure to bind is.
    pub fn bind(addr: SocketAddr, opts: &SocketOptions) -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(!opts.dual_stack)?;
        }
        if let Some(n) = opts.recv_buffer {
            let _ = socket.set_recv_buffer_size(n);
        }
        if let Some(n) = opts.send_buffer {
            let _ = socket.set_send_buffer_size(n);
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let std_socket: std::net::UdpSocket = socket.into();
        let local = std_socket.local_addr()?;
        Ok(UdpSocket {
            io: mio::net::UdpSocket::from_std(std_socket),
            local,
        })
    }

    /// The bound address (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The mio source, to register with a `mio::Registry`.
    pub fn source(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.io
    }

    /// Receives as many datagrams as are waiting, up to the batch's capacity. Returns how
    /// many; `Ok(0)` means none were waiting (`WouldBlock`). Retries on `Interrupted`.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        loop {
            match sys::recv_batch(&self.io, batch) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the batch's datagrams from the first unsent one on; returns how many were sent
    /// (fewer than queued if the socket buffer filled: call again when writable). Retries on
    /// `Interrupted`. Datagrams the kernel refuses outright (e.g. an unreachable address) are
    /// skipped and counted in [`SendBatch::failed`].
    pub fn send_batch(&self, batch: &mut SendBatch) -> io::Result<usize> {
        let mut total = 0;
        while batch.sent < batch.len {
            match sys::send_batch(&self.io, batch) {
                Ok(0) => break,
                Ok(n) => {
                    batch.sent += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // One datagram the kernel will never take: skip it, keep the rest.
                    batch.sent += 1;
                    batch.failed += 1;
                }
            }
        }
        if batch.sent == batch.len {
            batch.clear();
        }
        Ok(total)
    }
}

/// Buffers for up to `capacity` received datagrams of up to `slot` bytes each, allocated once.
#[derive(Debug)]
pub struct RecvBatch {
    data: Vec<u8>,
    slot: usize,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    count: usize,
}

impl RecvBatch {
    /// Space for `capacity` datagrams of up to `slot` bytes (longer ones are truncated and
    /// will fail their integrity check).
    pub fn new(capacity: usize, slot: usize) -> RecvBatch {
        let capacity = capacity.max(1);
        RecvBatch {
            data: vec![0; capacity * slot],
            slot,
            lens: vec![0; capacity],
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); capacity],
            count: 0,
        }
    }

    /// How many datagrams the batch can hold.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Datagrams received by the last `recv_batch`.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last `recv_batch` received nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i`: its source and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.count {
            return None;
        }
        let start = i * self.slot;
        Some((self.addrs[i], &self.data[start..start + self.lens[i]]))
    }

    fn clear(&mut self) {
        self.count = 0;
    }
}

/// Datagrams waiting to be sent, in buffers allocated once.
#[derive(Debug)]
pub struct SendBatch {
    data: Vec<u8>,
    slot: usize,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    len: usize,
    sent: usize,
    failed: u64,
}

impl SendBatch {
    /// Space for `capacity` datagrams of up to `slot` bytes.
    pub fn new(capacity: usize, slot: usize) -> SendBatch {
        let capacity = capacity.max(1);
        SendBatch {
            data: vec![0; capacity * slot],
            slot,
            lens: vec![0; capacity],
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); capacity],
            len: 0,
            sent: 0,
            failed: 0,
        }
    }

    /// Whether no more datagrams fit.
    pub fn is_full(&self) -> bool {
        self.len == self.lens.len()
    }

    /// Datagrams queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.len - self.sent
    }

    /// Datagrams the kernel refused outright since the batch was created.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// The next free slot, to be filled and then committed with [`push`](Self::push).
    /// `None` when the batch is full.
    pub fn slot_mut(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let start = self.len * self.slot;
        Some(&mut self.data[start..start + self.slot])
    }

    /// Commits the slot returned by `slot_mut`: `len` bytes to `to`.
    pub fn push(&mut self, to: SocketAddr, len: usize) {
        debug_assert!(!self.is_full() && len <= self.slot);
        self.lens[self.len] = len.min(self.slot);
        self.addrs[self.len] = to;
        self.len += 1;
    }

    fn clear(&mut self) {
        self.len = 0;
        self.sent = 0;
    }

    fn datagram(&self, i: usize) -> (SocketAddr, &[u8]) {
        let start = i * self.slot;
        (self.addrs[i], &self.data[start..start + self.lens[i]])
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    //! `recvmmsg`/`sendmmsg`: one system call for a whole batch.

    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use super::{RecvBatch, SendBatch};

    /// Most datagrams per system call.
    const MAX_BATCH: usize = 64;

    pub fn recv_batch(sock: &mio::net::UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
        let n = batch.capacity().min(MAX_BATCH);
        // SAFETY: all-zero bytes are a valid value for these plain C structs.
        let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        let slot = batch.slot;
        let base = batch.data.as_mut_ptr();
        for i in 0..n {
            // SAFETY: `i * slot + slot <= data.len()` because data holds capacity * slot bytes
            // and i < n <= capacity.
            iovs[i].iov_base = unsafe { base.add(i * slot) }.cast();
            iovs[i].iov_len = slot;
            hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live iovec and sockaddr_storage of this frame, and
        // each iovec at a distinct `slot`-byte region of `batch.data`, which outlives the call.
        // The fd is a valid open socket owned by `sock`.
        let got = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        let mut kept = 0;
        for i in 0..got {
            let Some(addr) = to_socket_addr(&names[i]) else {
                continue;
            };
            let len = (hdrs[i].msg_len as usize).min(slot);
            if kept != i {
                batch
                    .data
                    .copy_within(i * slot..i * slot + len, kept * slot);
            }
            batch.lens[kept] = len;
            batch.addrs[kept] = addr;
            kept += 1;
        }
        batch.count = kept;
        Ok(kept)
    }

    pub fn send_batch(sock: &mio::net::UdpSocket, batch: &SendBatch) -> io::Result<usize> {
        let n = (batch.len - batch.sent).min(MAX_BATCH);
        // SAFETY: all-zero bytes are a valid value for these plain C structs.
        let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        for i in 0..n {
            let (addr, data) = batch.datagram(batch.sent + i);
            let len = from_socket_addr(addr, &mut names[i]);
            iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = data.len();
            hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = len;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live iovec and address of this frame; each iovec
        // points into `batch.data`, borrowed for the whole call; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match s.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in, and
                // sockaddr_storage is large and aligned enough for it.
                let a: &libc::sockaddr_in =
                    unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6, and
                // sockaddr_storage is large and aligned enough for it.
                let a: &libc::sockaddr_in6 =
                    unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    fn from_socket_addr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
                let s: &mut libc::sockaddr_in =
                    unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
                s.sin_family = libc::AF_INET as libc::sa_family_t;
                s.sin_port = a.port().to_be();
                s.sin_addr = libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
                let s: &mut libc::sockaddr_in6 =
                    unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
                s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                s.sin6_port = a.port().to_be();
                s.sin6_flowinfo = a.flowinfo();
                s.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                s.sin6_scope_id = a.scope_id();
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! Portable fallback: one system call per datagram.

    use std::io;

    use super::{RecvBatch, SendBatch};

    pub fn recv_batch(sock: &mio::net::UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut n = 0;
        while n < batch.capacity() {
            let start = n * batch.slot;
            let slot = batch.slot;
            match sock.recv_from(&mut batch.data[start..start + slot]) {
                Ok((len, addr)) => {
                    batch.lens[n] = len;
                    batch.addrs[n] = addr;
                    n += 1;
                }
                Err(e) if n > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        batch.count = n;
        Ok(n)
    }

    pub fn send_batch(sock: &mio::net::UdpSocket, batch: &SendBatch) -> io::Result<usize> {
        let (addr, data) = batch.datagram(batch.sent);
        sock.send_to(data, addr).map(|_| 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cross_loopback_in_both_address_families() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(a) = UdpSocket::bind(local.parse().unwrap(), &SocketOptions::default()) else {
                continue; // no IPv6 on this machine
            };
            let b = UdpSocket::bind(local.parse().unwrap(), &SocketOptions::default()).unwrap();
            let mut out = SendBatch::new(100, 1500);
            for i in 0..100u32 {
                let slot = out.slot_mut().unwrap();
                slot[..4].copy_from_slice(&i.to_le_bytes());
                out.push(b.local_addr(), 4 + (i as usize % 50));
            }
            assert!(out.is_full());
            let mut sent = 0;
            for _ in 0..1000 {
                sent += a.send_batch(&mut out).unwrap();
                if out.pending() == 0 {
                    break;
                }
            }
            assert_eq!(sent, 100);
            let mut inb = RecvBatch::new(32, 1500);
            let mut seen = Vec::new();
            for _ in 0..100_000 {
                let n = b.recv_batch(&mut inb).unwrap();
                for i in 0..n {
                    let (from, data) = inb.get(i).unwrap();
                    assert_eq!(from, a.local_addr());
                    let idx = u32::from_le_bytes(data[..4].try_into().unwrap());
                    assert_eq!(data.len(), 4 + (idx as usize % 50));
                    seen.push(idx);
                }
                if seen.len() == 100 {
                    break;
                }
                std::thread::yield_now();
            }
            seen.sort();
            assert_eq!(seen, (0..100).collect::<Vec<_>>(), "{local}");
            assert_eq!(b.recv_batch(&mut inb).unwrap(), 0, "nothing more");
        }
    }
}
