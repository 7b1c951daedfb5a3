//! A nonblocking UDP socket with batched I/O: `recvmmsg`/`sendmmsg` on Linux, a loop of
//! `recv_from`/`send_to` elsewhere. The only code in the crate that calls into the OS.
//!
//! On Linux the socket also uses the kernel's UDP offloads where they are available (detected
//! at [`UdpSocket::bind`], see [`SocketOptions::offload`]):
//!
//! - **GSO** (`UDP_SEGMENT`, Linux 4.18+): consecutive queued datagrams to the same destination
//!   with the same size (the last of a run may be shorter) leave as one message that the
//!   kernel (or the network card) cuts into the original datagrams, so a run of up to 64
//!   datagrams costs one trip through the stack instead of one each. If the kernel refuses a
//!   segmented send, the socket stops segmenting for good and resends the batch the plain way.
//! - **GRO** (`UDP_GRO`, Linux 5.0+): the kernel may hand over a run of datagrams from one
//!   source as one coalesced datagram plus its segment size; [`UdpSocket::recv_batch`] splits
//!   it again, so a [`RecvBatch`] always holds one entry per datagram sent, in order. GRO is
//!   turned on at the first receive into a batch whose slots can hold a coalesced run (see
//!   [`RecvBatch::new`]), not at bind: once on it cannot safely be turned off again (the
//!   kernel stops labelling the runs already queued), and a socket only ever read with
//!   smaller slots must never receive runs.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use socket2::{Domain, Protocol, Socket, Type};

/// The smallest receive slot that can hold any coalesced (GRO) datagram: the largest UDP
/// payload. Only a receive into a batch with slots this large turns GRO on.
const GRO_SLOT: usize = u16::MAX as usize;
/// [`UdpSocket`]'s GRO states: off for good, to be tried at the first large-slot receive, on.
const GRO_OFF: u8 = 0;
const GRO_PENDING: u8 = 1;
const GRO_ON: u8 = 2;
/// Most segments in one coalesced datagram we send: the kernel's `UDP_MAX_SEGMENTS` (64 until
/// Linux 6.13, 128 since). Received ones may hold more; the batch then grows once.
const MAX_SEGMENTS: usize = 64;
/// Most messages per `recvmmsg`/`sendmmsg` call.
const MAX_BATCH: usize = 64;

/// Socket settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// Kernel receive buffer size in bytes (`SO_RCVBUF`); `None` keeps the system default.
    pub recv_buffer: Option<usize>,
    /// Kernel send buffer size in bytes (`SO_SNDBUF`); `None` keeps the system default.
    pub send_buffer: Option<usize>,
    /// For an IPv6 address: accept IPv4-mapped peers too (`IPV6_V6ONLY` off).
    pub dual_stack: bool,
    /// Use the kernel's UDP segmentation offload on send (`UDP_SEGMENT`) and receive offload
    /// (`UDP_GRO`) where it has them (Linux; elsewhere this does nothing). Whether they are
    /// in use shows in [`UdpSocket::gso_enabled`] and [`UdpSocket::gro_enabled`]. `false`
    /// keeps one message per datagram both ways, e.g. to measure the difference. Default
    /// `true`.
    pub offload: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            recv_buffer: Some(4 << 20),
            send_buffer: Some(4 << 20),
            dual_stack: false,
            offload: true,
        }
    }
}

/// A nonblocking UDP socket registered with mio.
#[derive(Debug)]
pub struct UdpSocket {
    io: mio::net::UdpSocket,
    local: SocketAddr,
    /// Sends segment runs with `UDP_SEGMENT`; cleared for good when the kernel refuses.
    gso: AtomicBool,
    /// `GRO_ON`: received datagrams may be coalesced runs (see `GRO_OFF`).
    gro: AtomicU8,
}

impl UdpSocket {
    /// Creates, tunes and binds a nonblocking socket. Buffer sizes the kernel refuses are not
    /// an error (it clamps them), nor are offloads it lacks; a failure to bind is.
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
        let gso = opts.offload && sys::gso_supported(&socket);
        let gro = if opts.offload { GRO_PENDING } else { GRO_OFF };
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let std_socket: std::net::UdpSocket = socket.into();
        let local = std_socket.local_addr()?;
        Ok(UdpSocket {
            io: mio::net::UdpSocket::from_std(std_socket),
            local,
            gso: AtomicBool::new(gso),
            gro: AtomicU8::new(gro),
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

    /// Whether sends currently use UDP segmentation offload (`UDP_SEGMENT`): the kernel has
    /// it, [`SocketOptions::offload`] asked for it and no segmented send has been refused.
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether the kernel may coalesce received datagrams (`UDP_GRO` is on). It is turned on
    /// at the first [`recv_batch`](Self::recv_batch) into a batch with slots of at least
    /// 65,535 bytes (as [`Driver`](super::Driver) uses), if [`SocketOptions::offload`] asks
    /// for it and the kernel has it; until then this is `false`.
    pub fn gro_enabled(&self) -> bool {
        self.gro.load(Ordering::Relaxed) == GRO_ON
    }

    /// Receives as many datagrams as are waiting, up to the batch's capacity (each coalesced
    /// run counting as one: with GRO the result can exceed [`RecvBatch::capacity`]). Returns
    /// how many; `Ok(0)` means none were waiting (`WouldBlock`). Retries on `Interrupted`.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        if batch.slot >= GRO_SLOT
            && self.gro.load(Ordering::Relaxed) == GRO_PENDING
            && (self.gro)
                .compare_exchange(GRO_PENDING, GRO_OFF, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && sys::enable_gro(&self.io)
        {
            self.gro.store(GRO_ON, Ordering::Relaxed);
        }
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
        while batch.queue.sent < batch.queue.len {
            match sys::send_batch(&self.io, &batch.queue, &mut batch.scratch, &self.gso) {
                Ok((0, _)) => break,
                Ok((n, messages)) => {
                    batch.queue.sent += n;
                    batch.messages += messages as u64;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // One datagram the kernel will never take: skip it, keep the rest.
                    batch.queue.sent += 1;
                    batch.failed += 1;
                }
            }
        }
        if batch.queue.sent == batch.queue.len {
            batch.clear();
        }
        Ok(total)
    }
}

/// One received datagram: its source and where its bytes are in the batch.
#[derive(Clone, Copy, Debug)]
struct Received {
    addr: SocketAddr,
    start: usize,
    len: usize,
}

/// Buffers for up to `capacity` received datagrams of up to `slot` bytes each, allocated once.
#[derive(Debug)]
pub struct RecvBatch {
    data: Vec<u8>,
    slot: usize,
    capacity: usize,
    /// The datagrams of the last receive, in order (several per slot for coalesced runs).
    datagrams: Vec<Received>,
    /// Messages the last receive got from the kernel (fewer than datagrams when coalesced).
    messages: usize,
    /// The system call's own arrays (headers, addresses, control messages), kept between
    /// calls so that a receive does not clear kilobytes of them each time.
    scratch: sys::RecvScratch,
}

impl RecvBatch {
    /// Space for `capacity` datagrams of up to `slot` bytes (longer ones are truncated and
    /// will fail their integrity check).
    ///
    /// With `slot` of at least 65,535 bytes (the largest UDP payload) each slot can take a
    /// whole coalesced run, and the first receive into such a batch turns GRO on for the
    /// socket (see [`UdpSocket::gro_enabled`]). Receives into batches with smaller slots never
    /// turn it on, so a socket only ever read with them gets its datagrams one by one. Do not
    /// read a socket with small slots after large ones: a coalesced run longer than `slot`
    /// then keeps only the datagrams that fit (the rest are lost, with a warning logged).
    pub fn new(capacity: usize, slot: usize) -> RecvBatch {
        let capacity = capacity.max(1);
        let entries = if cfg!(target_os = "linux") && slot >= GRO_SLOT {
            capacity.max(capacity.min(MAX_BATCH) * MAX_SEGMENTS)
        } else {
            capacity
        };
        RecvBatch {
            data: vec![0; capacity * slot],
            slot,
            capacity,
            datagrams: Vec::with_capacity(entries),
            messages: 0,
            scratch: sys::RecvScratch::new(capacity.min(MAX_BATCH)),
        }
    }

    /// How many datagrams one receive takes at most, counting a coalesced (GRO) run as one.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Datagrams received by the last `recv_batch`.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Whether the last `recv_batch` received nothing.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Messages the last `recv_batch` got from the kernel: fewer than [`len`](Self::len)
    /// when GRO coalesced datagrams.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Datagram `i`: its source and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let d = self.datagrams.get(i)?;
        Some((d.addr, &self.data[d.start..d.start + d.len]))
    }

    fn clear(&mut self) {
        self.datagrams.clear();
        self.messages = 0;
    }
}

/// Datagrams waiting to be sent, in buffers allocated once.
#[derive(Debug)]
pub struct SendBatch {
    queue: Queue,
    failed: u64,
    /// Messages handed to the kernel, see [`messages_sent`](Self::messages_sent).
    messages: u64,
    /// The system call's own arrays, kept between calls (see [`RecvBatch`]'s).
    scratch: sys::SendScratch,
}

/// The datagrams of a [`SendBatch`]: apart from its scratch arrays so that a send can read
/// the one while filling the other.
#[derive(Debug)]
struct Queue {
    data: Vec<u8>,
    slot: usize,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    /// Datagrams queued.
    len: usize,
    /// Of those, the ones already sent (or skipped as refused).
    sent: usize,
}

impl Queue {
    fn datagram(&self, i: usize) -> (SocketAddr, &[u8]) {
        let start = i * self.slot;
        (self.addrs[i], &self.data[start..start + self.lens[i]])
    }
}

impl SendBatch {
    /// Space for `capacity` datagrams of up to `slot` bytes.
    pub fn new(capacity: usize, slot: usize) -> SendBatch {
        let capacity = capacity.max(1);
        SendBatch {
            queue: Queue {
                data: vec![0; capacity * slot],
                slot,
                lens: vec![0; capacity],
                addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); capacity],
                len: 0,
                sent: 0,
            },
            failed: 0,
            messages: 0,
            scratch: sys::SendScratch::new(capacity),
        }
    }

    /// Whether no more datagrams fit.
    pub fn is_full(&self) -> bool {
        self.queue.len == self.queue.lens.len()
    }

    /// Datagrams queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.queue.len - self.queue.sent
    }

    /// Datagrams the kernel refused outright since the batch was created.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Messages the kernel took since the batch was created: fewer than the datagrams sent
    /// when segmentation offload (GSO) put several datagrams in one.
    pub fn messages_sent(&self) -> u64 {
        self.messages
    }

    /// The next free slot, to be filled and then committed with [`push`](Self::push).
    /// `None` when the batch is full.
    pub fn slot_mut(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let q = &mut self.queue;
        let start = q.len * q.slot;
        Some(&mut q.data[start..start + q.slot])
    }

    /// Commits the slot returned by `slot_mut`: `len` bytes to `to`.
    pub fn push(&mut self, to: SocketAddr, len: usize) {
        debug_assert!(!self.is_full() && len <= self.queue.slot);
        let q = &mut self.queue;
        q.lens[q.len] = len.min(q.slot);
        q.addrs[q.len] = to;
        q.len += 1;
    }

    fn clear(&mut self) {
        self.queue.len = 0;
        self.queue.sent = 0;
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    //! `recvmmsg`/`sendmmsg`: one system call for a whole batch, with `UDP_SEGMENT` (GSO) and
    //! `UDP_GRO` control messages when the socket uses them.

    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::{fmt, io};

    use super::{MAX_BATCH, MAX_SEGMENTS, Queue, Received, RecvBatch};

    /// From `linux/udp.h` (the `libc` crate defines them for some Linux targets only).
    const UDP_SEGMENT: libc::c_int = 103;
    const UDP_GRO: libc::c_int = 104;

    /// Most datagrams (one iovec each) per segmented `sendmmsg`.
    const MAX_SEND_IOVS: usize = 256;
    /// Most payload bytes in one segmented message: the largest IPv4 UDP payload
    /// (65,535 − 20 − 8). The kernel refuses more (`EMSGSIZE`).
    const MAX_GSO_BYTES: usize = 65_507;

    /// Room for the control messages of one message: a `UDP_SEGMENT` (u16) to send, a
    /// `UDP_GRO` (int) to receive, with spare room for any other the kernel adds.
    const CMSG_BUF: usize = 64;
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    const GSO_CMSG_SPACE: usize = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    // SAFETY: as above.
    const GRO_CMSG_SPACE: usize =
        unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
    const _: () = assert!(GSO_CMSG_SPACE <= CMSG_BUF && GRO_CMSG_SPACE <= CMSG_BUF);
    // SAFETY: CMSG_LEN only computes a size from its argument.
    const GRO_CMSG_LEN: usize = unsafe { libc::CMSG_LEN(size_of::<libc::c_int>() as u32) } as usize;

    /// A control-message buffer, aligned for `cmsghdr` (whose alignment is that of `size_t`).
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct CmsgBuf([u8; CMSG_BUF]);
    const _: () = assert!(align_of::<CmsgBuf>() >= align_of::<libc::cmsghdr>());

    /// Whether the kernel has GSO: reading `UDP_SEGMENT` works since the kernel that added
    /// it (setting it instead would segment every send).
    pub fn gso_supported(socket: &socket2::Socket) -> bool {
        let fd = socket.as_raw_fd();
        let mut val: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is an open socket owned by `socket`; `val` and `len` are live locals
        // and `len` holds `val`'s size, so the kernel writes at most that many bytes.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_UDP,
                UDP_SEGMENT,
                (&mut val as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        ret == 0
    }

    /// Turns `UDP_GRO` on; whether the kernel accepted.
    pub fn enable_gro(sock: &mio::net::UdpSocket) -> bool {
        let val: libc::c_int = 1;
        // SAFETY: the fd is an open socket owned by `sock`; the kernel reads
        // `size_of::<c_int>()` bytes from `val`, a live local of that size.
        let ret = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_UDP,
                UDP_GRO,
                (&val as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ret == 0
    }

    /// The arrays `recvmmsg` reads and fills, one entry per message: allocated with the
    /// batch and reused. The pointers in the iovecs and headers are written at the first
    /// call and again only if the batch's data buffer is not where they point (it never
    /// moves once allocated); between calls only the lengths the kernel shortened are reset.
    pub struct RecvScratch {
        names: Box<[libc::sockaddr_storage]>,
        iovs: Box<[libc::iovec]>,
        hdrs: Box<[libc::mmsghdr]>,
        ctrl: Box<[CmsgBuf]>,
        /// The address of the data buffer (and the slot size) the pointers were written for;
        /// 0 before the first call.
        wired: (usize, usize),
        /// Leading headers whose `msg_namelen` and `msg_controllen` the last call may have
        /// changed: the messages it received and the one after them.
        dirty: usize,
    }

    impl RecvScratch {
        /// Room for `entries` messages per call.
        pub fn new(entries: usize) -> RecvScratch {
            RecvScratch {
                // SAFETY: all-zero bytes are a valid value for these plain C structs.
                names: vec![unsafe { zeroed() }; entries].into_boxed_slice(),
                // SAFETY: as above.
                iovs: vec![unsafe { zeroed() }; entries].into_boxed_slice(),
                // SAFETY: as above.
                hdrs: vec![unsafe { zeroed() }; entries].into_boxed_slice(),
                ctrl: vec![CmsgBuf([0; CMSG_BUF]); entries].into_boxed_slice(),
                wired: (0, 0),
                dirty: 0,
            }
        }
    }

    /// The scratch arrays of a send: addresses, iovecs (several per segmented message),
    /// headers, control messages and the runs they describe.
    pub struct SendScratch {
        names: Box<[libc::sockaddr_storage]>,
        iovs: Box<[libc::iovec]>,
        hdrs: Box<[libc::mmsghdr]>,
        ctrl: Box<[CmsgBuf]>,
        /// Per message: first iovec, datagrams, segment size, address length.
        runs: Box<[(usize, usize, usize, libc::socklen_t)]>,
    }

    impl SendScratch {
        /// Room for the messages of a batch of `capacity` datagrams.
        pub fn new(capacity: usize) -> SendScratch {
            let msgs = capacity.min(MAX_BATCH);
            SendScratch {
                // SAFETY: all-zero bytes are a valid value for these plain C structs.
                names: vec![unsafe { zeroed() }; msgs].into_boxed_slice(),
                // SAFETY: as above.
                iovs: vec![unsafe { zeroed() }; capacity.min(MAX_SEND_IOVS)].into_boxed_slice(),
                // SAFETY: as above.
                hdrs: vec![unsafe { zeroed() }; msgs].into_boxed_slice(),
                ctrl: vec![CmsgBuf([0; CMSG_BUF]); msgs].into_boxed_slice(),
                runs: vec![(0, 0, 0, 0); msgs].into_boxed_slice(),
            }
        }
    }

    // SAFETY: the only non-`Send`/`Sync` parts of the scratch arrays are the raw pointers
    // inside the iovecs and headers. They point into heap memory owned by the same batch
    // (its data buffer and the scratch's own boxed arrays), are handed to the kernel only
    // within one `recv_batch`/`send_batch` call that holds the batch mutably, and nothing
    // dereferences them outside such a call. So moving or sharing a scratch across threads
    // moves or shares plain bytes.
    unsafe impl Send for RecvScratch {}
    // SAFETY: as above.
    unsafe impl Sync for RecvScratch {}
    // SAFETY: as above.
    unsafe impl Send for SendScratch {}
    // SAFETY: as above.
    unsafe impl Sync for SendScratch {}

    impl fmt::Debug for RecvScratch {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RecvScratch")
                .field("entries", &self.hdrs.len())
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for SendScratch {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("SendScratch")
                .field("messages", &self.hdrs.len())
                .field("iovs", &self.iovs.len())
                .finish_non_exhaustive()
        }
    }

    pub fn recv_batch(sock: &mio::net::UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
        let s = &mut batch.scratch;
        // As many messages as the scratch has entries: min(capacity, MAX_BATCH).
        let n = s.hdrs.len();
        let slot = batch.slot;
        let base = batch.data.as_mut_ptr();
        if s.wired != (base as usize, slot) {
            for (i, iov) in s.iovs.iter_mut().enumerate() {
                // In bounds: data holds capacity * slot bytes and i < n <= capacity.
                iov.iov_base = base.wrapping_add(i * slot).cast();
                iov.iov_len = slot;
            }
            // From here on the arrays are only reached through these pointers (and by the
            // kernel) during calls. Every field the kernel reads is set here for each entry
            // (the others are never written and stay zero). The pointers stay valid: the
            // boxed arrays and the data buffer are never reallocated, and a buffer at another
            // address (or another slot size) is detected above.
            let (names_p, iovs_p, ctrl_p) = (
                s.names.as_mut_ptr(),
                s.iovs.as_mut_ptr(),
                s.ctrl.as_mut_ptr(),
            );
            for (i, h) in s.hdrs.iter_mut().enumerate() {
                let h = &mut h.msg_hdr;
                h.msg_name = names_p.wrapping_add(i).cast();
                h.msg_iov = iovs_p.wrapping_add(i);
                h.msg_iovlen = 1;
                h.msg_control = ctrl_p.wrapping_add(i).cast();
            }
            s.wired = (base as usize, slot);
            s.dirty = n;
        }
        // The kernel writes back `msg_namelen`, `msg_controllen` and `msg_flags` of the
        // messages it fills (and of no other): restore the two lengths it reads.
        for h in &mut s.hdrs[..s.dirty] {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = CMSG_BUF as _;
        }
        // SAFETY: each of the `n` headers points at its own live iovec, sockaddr_storage and
        // control buffer in the batch's scratch (of the sizes given), and each iovec at a
        // distinct `slot`-byte region of `batch.data`; all outlive the call. The fd is a
        // valid open socket owned by `sock`.
        let got = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                s.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let err = io::Error::last_os_error();
            // Nothing was received; reset the first header anyway next time.
            s.dirty = 1.min(n);
            return Err(err);
        }
        let got = got as usize;
        s.dirty = (got + 1).min(n);
        batch.messages = got;
        for (i, h) in s.hdrs[..got].iter().enumerate() {
            let Some(addr) = to_socket_addr(&s.names[i], h.msg_hdr.msg_namelen) else {
                continue;
            };
            let start = i * slot;
            let len = (h.msg_len as usize).min(slot);
            let segment = gro_segment_size(&h.msg_hdr).filter(|&s| s < len);
            let Some(segment) = segment else {
                batch.datagrams.push(Received { addr, start, len });
                continue;
            };
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                log::warn!(
                    "a coalesced run from {addr} did not fit a {slot}-byte slot: datagrams lost"
                );
            }
            // A coalesced run: segments of `segment` bytes, the last possibly shorter.
            let mut off = 0;
            while off < len {
                let seg_len = segment.min(len - off);
                batch.datagrams.push(Received {
                    addr,
                    start: start + off,
                    len: seg_len,
                });
                off += seg_len;
            }
        }
        Ok(batch.datagrams.len())
    }

    /// The segment size of a coalesced datagram, from its `UDP_GRO` control message.
    fn gro_segment_size(hdr: &libc::msghdr) -> Option<usize> {
        // SAFETY: `msg_control` points at a live, aligned `CmsgBuf` and the kernel set
        // `msg_controllen` to the bytes of it that it filled; CMSG_FIRSTHDR only reads these
        // two fields and returns null or a pointer to a header inside that range.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
        while !cmsg.is_null() {
            // SAFETY: a non-null result of CMSG_FIRSTHDR/CMSG_NXTHDR points at a whole,
            // aligned `cmsghdr` inside the filled part of the buffer.
            let c = unsafe { &*cmsg };
            if c.cmsg_level == libc::SOL_UDP
                && c.cmsg_type == UDP_GRO
                && c.cmsg_len as usize >= GRO_CMSG_LEN
            {
                // SAFETY: `cmsg_len` (which the kernel cuts to what it actually wrote) says an
                // int follows the header, at CMSG_DATA; read unaligned to not rely on padding.
                let size = unsafe { libc::CMSG_DATA(cmsg).cast::<libc::c_int>().read_unaligned() };
                return usize::try_from(size).ok().filter(|&s| s > 0);
            }
            // SAFETY: `hdr` and `cmsg` are as above; CMSG_NXTHDR checks the next header
            // against `msg_controllen` and returns null past the end.
            cmsg = unsafe { libc::CMSG_NXTHDR(hdr, cmsg) };
        }
        None
    }

    /// Sends from the first unsent datagram on, segmented while `gso` is set. If the kernel
    /// refuses a segmented message (nothing of which left), the same datagrams go again the
    /// plain way in the same call. If the refusal names segmentation (`EINVAL`, `ENOPROTOOPT`,
    /// `EIO`, `EMSGSIZE`) and the plain send gets through, segmentation stops for good; if
    /// the plain send fails too, the datagram, not segmentation, may be at fault (e.g. port
    /// 0 gives `EINVAL` either way), and the next call tries segmenting again.
    ///
    /// Returns the datagrams sent and the messages they went in.
    pub fn send_batch(
        sock: &mio::net::UdpSocket,
        queue: &Queue,
        scratch: &mut SendScratch,
        gso: &AtomicBool,
    ) -> io::Result<(usize, usize)> {
        // One datagram left is one plain message either way (a run of one carries no
        // segment size): skip looking for runs.
        if !gso.load(Ordering::Relaxed) || queue.len - queue.sent == 1 {
            return send_plain(sock, queue, scratch).map(|n| (n, n));
        }
        let (err, segments) = match send_segmented(sock, queue, scratch) {
            Ok(n) => return Ok(n),
            Err(e) => e,
        };
        let retry = matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        );
        if segments == 1 || retry {
            // Not a segmented message, or no verdict on segmentation: as for a plain send.
            return Err(err);
        }
        let plain = send_plain(sock, queue, scratch).map(|n| (n, n));
        let refused = matches!(
            err.raw_os_error(),
            Some(libc::EINVAL | libc::ENOPROTOOPT | libc::EIO | libc::EMSGSIZE)
        );
        if refused && matches!(plain, Ok((n, _)) if n > 0) {
            gso.store(false, Ordering::Relaxed);
            log::info!("UDP segmentation offload refused ({err}): sending datagrams one by one");
        }
        plain
    }

    #[cfg(test)]
    thread_local! {
        /// Test counter: calls of `send_segmented` on this thread, so that tests can show
        /// which sends skip the search for runs (its result is the same plain message for a
        /// single datagram, so nothing else tells the two paths apart).
        pub static RUN_SEARCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// One `sendmmsg` with one message per run of datagrams to the same destination with the
    /// same size (the last may be shorter), each run carrying its segment size in a
    /// `UDP_SEGMENT` control message. Returns the datagrams sent and the messages they went
    /// in, or the error with how many datagrams the first (refused) message held.
    fn send_segmented(
        sock: &mio::net::UdpSocket,
        queue: &Queue,
        s: &mut SendScratch,
    ) -> Result<(usize, usize), (io::Error, usize)> {
        #[cfg(test)]
        RUN_SEARCHES.with(|c| c.set(c.get() + 1));
        let (max_msgs, max_iovs) = (s.hdrs.len(), s.iovs.len());
        let (mut msgs, mut iov_count, mut next) = (0, 0, queue.sent);
        while next < queue.len && msgs < max_msgs && iov_count < max_iovs {
            let (addr, first) = queue.datagram(next);
            let segment = first.len();
            let room = (max_iovs - iov_count).min(MAX_SEGMENTS);
            let (mut count, mut total) = (0, 0);
            for (to, data) in (next..queue.len).map(|i| queue.datagram(i)) {
                let fits = count == 0
                    || (to == addr
                        && !data.is_empty()
                        && data.len() <= segment
                        && total + data.len() <= MAX_GSO_BYTES);
                if count == room || !fits {
                    break;
                }
                s.iovs[iov_count + count] = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                count += 1;
                total += data.len();
                if data.len() < segment || segment == 0 {
                    break; // a shorter datagram ends the run (and empty ones stay alone)
                }
            }
            let namelen = from_socket_addr(addr, &mut s.names[msgs]);
            s.runs[msgs] = (iov_count, count, segment, namelen);
            msgs += 1;
            iov_count += count;
            next += count;
        }
        // From here on the arrays are only reached through these pointers (and by the kernel)
        // until the call returns. Every field the kernel reads is set below for each message
        // sent (the others are never written and stay zero), since the scratch still holds
        // the previous call's values.
        let (names_p, iovs_p, ctrl_p) = (
            s.names.as_mut_ptr(),
            s.iovs.as_mut_ptr(),
            s.ctrl.as_mut_ptr(),
        );
        for (i, (h, &(first, count, segment, namelen))) in
            s.hdrs.iter_mut().zip(&*s.runs).take(msgs).enumerate()
        {
            let h = &mut h.msg_hdr;
            h.msg_name = names_p.wrapping_add(i).cast();
            h.msg_namelen = namelen;
            h.msg_iov = iovs_p.wrapping_add(first);
            h.msg_iovlen = count as _;
            if count == 1 {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                continue;
            }
            h.msg_control = ctrl_p.wrapping_add(i).cast();
            h.msg_controllen = GSO_CMSG_SPACE as _;
            // SAFETY: `msg_control` points at this message's aligned `CmsgBuf` of
            // CMSG_BUF >= GSO_CMSG_SPACE bytes, so CMSG_FIRSTHDR returns a non-null pointer
            // to a `cmsghdr` at its start, and CMSG_DATA a pointer inside it with room for
            // the u16 (CMSG_SPACE(2) bytes in all); CMSG_LEN only computes. The three header
            // fields and the data are all the kernel reads (the padding was zeroed at
            // allocation and is never written).
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                // Runs of more than one total at most MAX_GSO_BYTES, so this fits a u16.
                libc::CMSG_DATA(c)
                    .cast::<u16>()
                    .write_unaligned(segment as u16);
            }
        }
        // SAFETY: each of the first `msgs` headers points at a live address, run of iovecs
        // and (for runs) control message in the batch's scratch; each iovec points into
        // `queue.data`, borrowed for the whole call; the kernel only reads them. The fd is a
        // valid open socket.
        let sent = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                s.hdrs.as_mut_ptr(),
                msgs as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err((io::Error::last_os_error(), s.runs[0].1));
        }
        let sent = sent as usize;
        Ok((s.runs[..sent].iter().map(|r| r.1).sum(), sent))
    }

    fn send_plain(
        sock: &mio::net::UdpSocket,
        queue: &Queue,
        s: &mut SendScratch,
    ) -> io::Result<usize> {
        let n = (queue.len - queue.sent).min(s.hdrs.len());
        for i in 0..n {
            let (addr, data) = queue.datagram(queue.sent + i);
            // `runs[i].3`: the address length, as in `send_segmented`.
            s.runs[i].3 = from_socket_addr(addr, &mut s.names[i]);
            s.iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
            s.iovs[i].iov_len = data.len();
        }
        // From here on the arrays are only reached through these pointers (and by the kernel);
        // every field the kernel reads is set for each of the `n` headers, as in
        // `send_segmented`.
        let (names_p, iovs_p) = (s.names.as_mut_ptr(), s.iovs.as_mut_ptr());
        for (i, h) in s.hdrs[..n].iter_mut().enumerate() {
            let h = &mut h.msg_hdr;
            h.msg_name = names_p.wrapping_add(i).cast();
            h.msg_namelen = s.runs[i].3;
            h.msg_iov = iovs_p.wrapping_add(i);
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        }
        // SAFETY: each of the first `n` headers points at a live iovec and address in the
        // batch's scratch; each iovec points into `queue.data`, borrowed for the whole call;
        // the kernel only reads them. The fd is a valid open socket.
        let sent = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                s.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    /// The address the kernel wrote, `len` bytes of `s`. The storage is reused between
    /// calls, so an address shorter than its family needs (which UDP never gives) would be
    /// partly an earlier one: `None`.
    fn to_socket_addr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        match s.ss_family as libc::c_int {
            _ if len < size_of::<libc::sa_family_t>() => None,
            libc::AF_INET if len < size_of::<libc::sockaddr_in>() => None,
            libc::AF_INET6 if len < size_of::<libc::sockaddr_in6>() => None,
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
                // The storage is reused: clear what an earlier IPv6 address left here.
                s.sin_zero = [0; 8];
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
    use std::sync::atomic::AtomicBool;

    use super::{Queue, Received, RecvBatch};

    /// Nothing to keep between calls here.
    #[derive(Debug)]
    pub struct RecvScratch;

    impl RecvScratch {
        pub fn new(_entries: usize) -> RecvScratch {
            RecvScratch
        }
    }

    /// Nothing to keep between calls here.
    #[derive(Debug)]
    pub struct SendScratch;

    impl SendScratch {
        pub fn new(_capacity: usize) -> SendScratch {
            SendScratch
        }
    }

    /// No offloads here.
    pub fn gso_supported(_socket: &socket2::Socket) -> bool {
        false
    }

    pub fn enable_gro(_sock: &mio::net::UdpSocket) -> bool {
        false
    }

    pub fn recv_batch(sock: &mio::net::UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut n = 0;
        while n < batch.capacity() {
            let start = n * batch.slot;
            let slot = batch.slot;
            match sock.recv_from(&mut batch.data[start..start + slot]) {
                Ok((len, addr)) => {
                    batch.datagrams.push(Received { addr, start, len });
                    n += 1;
                }
                Err(e) if n > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        batch.messages = n;
        Ok(n)
    }

    pub fn send_batch(
        sock: &mio::net::UdpSocket,
        queue: &Queue,
        _scratch: &mut SendScratch,
        _gso: &AtomicBool,
    ) -> io::Result<(usize, usize)> {
        let (addr, data) = queue.datagram(queue.sent);
        sock.send_to(data, addr).map(|_| (1, 1))
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
            let (got, _) = recv_n(&b, &mut inb, 100, a.local_addr());
            let mut seen: Vec<u32> = (got.iter())
                .map(|data| {
                    let idx = u32::from_le_bytes(data[..4].try_into().unwrap());
                    assert_eq!(data.len(), 4 + (idx as usize % 50));
                    idx
                })
                .collect();
            seen.sort();
            assert_eq!(seen, (0..100).collect::<Vec<_>>(), "{local}");
            assert_eq!(b.recv_batch(&mut inb).unwrap(), 0, "nothing more");
        }
    }

    /// One receive batch read from an IPv4 and an IPv6 socket in turn, with runs of
    /// different lengths: each receive sees every address whole (the kernel shortens the
    /// address lengths of the entries it fills, so they must be restored between calls).
    /// Without IPv6 every round is IPv4: the run lengths and sources are still checked, but
    /// the address length the kernel writes back is then always the same, so only a machine
    /// with IPv6 can show it restored.
    #[test]
    fn one_batch_reused_across_address_families_and_run_lengths() {
        let opts = SocketOptions {
            offload: false,
            ..SocketOptions::default()
        };
        let bind = |addr: &str| UdpSocket::bind(addr.parse().unwrap(), &opts);
        let (four, from4) = (bind("127.0.0.1:0").unwrap(), bind("127.0.0.1:0").unwrap());
        let six = bind("[::1]:0")
            .ok()
            .map(|six| (six, bind("[::1]:0").unwrap()));
        if six.is_none() {
            eprintln!("no IPv6 on this machine: IPv4 rounds only");
        }
        let mut inb = RecvBatch::new(8, 1500);
        let mut out = SendBatch::new(8, 1500);
        for (round, count) in [3usize, 8, 1, 5, 8, 2, 7].into_iter().enumerate() {
            let (to, from) = match &six {
                Some((six, from6)) if round % 2 == 1 => (six, from6),
                _ => (&four, &from4),
            };
            for k in 0..count {
                out.slot_mut().unwrap()[..20].copy_from_slice(&payload(k, 20));
                out.push(to.local_addr(), 20);
            }
            assert_eq!(from.send_batch(&mut out).unwrap(), count);
            let (got, _) = recv_n(to, &mut inb, count, from.local_addr());
            let want: Vec<_> = (0..count).map(|k| payload(k, 20)).collect();
            assert!(got == want, "round {round}");
            assert_eq!(to.recv_batch(&mut inb).unwrap(), 0, "nothing more");
        }
    }

    /// One receive batch (GRO on where the kernel has it) filled in turn by single datagrams
    /// and by coalesced runs, in both address families (IPv4 alone without IPv6). A single
    /// datagram carries no control message, so the kernel sets its entry's control length to
    /// 0; a run that lands in that entry at the next call needs its `UDP_GRO` control message
    /// to be split again, so the control length must be restored between calls. Where the
    /// kernel does not coalesce (no GSO or GRO), the datagrams must still arrive whole, in
    /// order, one message each.
    #[test]
    fn one_batch_reused_between_single_datagrams_and_coalesced_runs() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let opts = SocketOptions::default();
            let Ok(a) = UdpSocket::bind(local.parse().unwrap(), &opts) else {
                eprintln!("{local}: not available on this machine");
                continue;
            };
            let b = UdpSocket::bind(local.parse().unwrap(), &opts).unwrap();
            let mut inb = RecvBatch::new(8, 65536);
            assert_eq!(b.recv_batch(&mut inb).unwrap(), 0); // turns GRO on where it can
            let coalescing = a.gso_enabled() && b.gro_enabled();
            eprintln!("{local}: GSO {} GRO {}", a.gso_enabled(), b.gro_enabled());
            let mut out = SendBatch::new(64, 1500);
            // (single datagrams or runs of 4, how many), each round's entries overlapping
            // those the round before filled.
            let rounds = [(false, 3), (true, 3), (false, 6), (true, 2), (false, 1)];
            let rounds = rounds.into_iter().chain([(true, 6), (false, 8), (true, 8)]);
            for (round, (runs, count)) in rounds.enumerate() {
                // Increasing sizes, so that no datagram can join the run before it.
                let mut want = Vec::new();
                for j in 0..count {
                    for _ in 0..if runs { 4 } else { 1 } {
                        let (k, len) = (want.len(), 100 + 50 * j);
                        out.slot_mut().unwrap()[..len].copy_from_slice(&payload(k, len));
                        out.push(b.local_addr(), len);
                        want.push(payload(k, len));
                    }
                    if !runs {
                        // One call per datagram: each goes as a plain message of its own.
                        assert_eq!(a.send_batch(&mut out).unwrap(), 1);
                    }
                }
                if runs {
                    // One call for all runs: with GSO, one message per run.
                    assert_eq!(a.send_batch(&mut out).unwrap(), 4 * count);
                }
                let (got, messages) = recv_n(&b, &mut inb, want.len(), a.local_addr());
                let lens: Vec<usize> = got.iter().map(Vec::len).collect();
                assert!(got == want, "{local} round {round}: lengths {lens:?}");
                let merged = runs && coalescing;
                assert_eq!(messages, if merged { count } else { want.len() });
                assert_eq!(b.recv_batch(&mut inb).unwrap(), 0, "nothing more");
            }
        }
    }

    /// Receives on `sock` until `n` datagrams have arrived, checking that each came from
    /// `from`, or until 100,000 receives or 10 s have passed (the caller checks how many it
    /// got). Returns the datagrams in arrival order and the kernel messages that carried
    /// them (fewer when GRO coalesced them).
    fn recv_n(
        sock: &UdpSocket,
        batch: &mut RecvBatch,
        n: usize,
        from: SocketAddr,
    ) -> (Vec<Vec<u8>>, usize) {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut got, mut messages) = (Vec::new(), 0);
        for _ in 0..100_000 {
            if got.len() >= n || std::time::Instant::now() > give_up {
                break;
            }
            let count = sock.recv_batch(batch).unwrap();
            messages += batch.messages();
            for i in 0..count {
                let (addr, data) = batch.get(i).unwrap();
                assert_eq!(addr, from, "source of datagram {}", got.len());
                got.push(data.to_vec());
            }
            if count == 0 {
                std::thread::yield_now();
            }
        }
        (got, messages)
    }

    /// Datagram `k` of a test: `len` bytes, its index first, then a pattern.
    fn payload(k: usize, len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|j| (j * 7 + k * 13) as u8).collect();
        let n = len.min(4);
        v[..n].copy_from_slice(&(k as u32).to_le_bytes()[..n]);
        v
    }

    /// What the receivers of an [`exchange`] got.
    #[derive(Debug)]
    struct Outcome {
        /// Per receiver, the datagrams in arrival order.
        received: Vec<Vec<Vec<u8>>>,
        /// Per receiver, the messages they came in (fewer when GRO coalesced them).
        messages: Vec<usize>,
        /// Whether the sender still used GSO at the end.
        gso: bool,
        /// Per receiver, whether GRO was on at the end.
        gro: Vec<bool>,
    }

    /// Sends `plan` (receiver index, length) from one socket to `receivers` sockets, `chunk`
    /// datagrams per batch (each chunk is received before the next is sent, to bound what is
    /// in flight), and checks that each receiver got its datagrams from the sender, intact
    /// and in order. `None` without IPv6.
    #[allow(clippy::too_many_arguments)]
    fn exchange(
        local: &str,
        send_offload: bool,
        recv_offload: bool,
        recv_slot: usize,
        receivers: usize,
        plan: &[(usize, usize)],
        chunk: usize,
        tweak: impl FnOnce(&UdpSocket),
    ) -> Option<Outcome> {
        let addr: SocketAddr = local.parse().unwrap();
        let opts = |offload| SocketOptions {
            offload,
            ..SocketOptions::default()
        };
        let a = UdpSocket::bind(addr, &opts(send_offload)).ok()?;
        let bs: Vec<UdpSocket> = (0..receivers)
            .map(|_| UdpSocket::bind(addr, &opts(recv_offload)).unwrap())
            .collect();
        tweak(&a);
        let mut out = SendBatch::new(chunk, 1500);
        let mut inb = RecvBatch::new(64, recv_slot);
        for b in &bs {
            // A first receive, as a driver's, turns GRO on where the slots allow.
            assert_eq!(b.recv_batch(&mut inb).unwrap(), 0);
        }
        let mut received = vec![Vec::new(); receivers];
        let mut messages = vec![0; receivers];
        for (c, part) in plan.chunks(chunk).enumerate() {
            let mut want = vec![0; receivers];
            for (j, &(to, len)) in part.iter().enumerate() {
                let k = c * chunk + j;
                out.slot_mut().unwrap()[..len].copy_from_slice(&payload(k, len));
                out.push(bs[to].local_addr(), len);
                want[to] += 1;
            }
            let mut sent = 0;
            for _ in 0..10_000 {
                sent += a.send_batch(&mut out).unwrap();
                if out.pending() == 0 {
                    break;
                }
                std::thread::yield_now();
            }
            assert_eq!(sent, part.len(), "all sent");
            assert_eq!(out.failed(), 0);
            for (r, b) in bs.iter().enumerate() {
                let (got, m) = recv_n(b, &mut inb, want[r], a.local_addr());
                assert_eq!(got.len(), want[r], "receiver {r}, chunk {c}");
                received[r].extend(got);
                messages[r] += m;
                assert_eq!(b.recv_batch(&mut inb).unwrap(), 0, "nothing more");
            }
        }
        for (r, got) in received.iter().enumerate() {
            let expected: Vec<Vec<u8>> = (plan.iter().enumerate())
                .filter(|(_, (to, _))| *to == r)
                .map(|(k, &(_, len))| payload(k, len))
                .collect();
            assert!(*got == expected, "receiver {r} got other datagrams");
        }
        Some(Outcome {
            received,
            messages,
            gso: a.gso_enabled(),
            gro: bs.iter().map(|b| b.gro_enabled()).collect(),
        })
    }

    /// A long run of equal-size datagrams with a short last one, then runs of small ones.
    fn one_peer_plan() -> Vec<(usize, usize)> {
        let mut plan = vec![(0, 1200); 127];
        plan.push((0, 300));
        plan.extend([(0, 100); 128]);
        plan.push((0, 37));
        plan
    }

    #[test]
    fn gso_run_of_equal_datagrams_with_a_short_last_one_arrives_in_order() {
        let plan = one_peer_plan();
        for local in ["127.0.0.1:0", "[::1]:0"] {
            // The receiver without GRO sees the datagrams one by one whatever the sender does.
            let Some(on) = exchange(local, true, false, 65536, 1, &plan, 128, |_| {}) else {
                continue; // no IPv6 on this machine
            };
            eprintln!("{local}: GSO used: {}", on.gso);
            let off = exchange(local, false, false, 65536, 1, &plan, 128, |_| {}).unwrap();
            assert!(!off.gso);
            assert_eq!(on.received, off.received);
            assert_eq!(on.messages, vec![plan.len()]);
        }
    }

    #[test]
    fn mixed_destinations_and_sizes_in_one_batch() {
        let mut plan = vec![(0, 1000); 10];
        plan.extend([(1, 500); 5]);
        plan.extend([(0, 1000); 3]);
        plan.extend([(0, 200), (0, 1000), (0, 1000), (0, 1300), (0, 1300)]);
        plan.extend([
            (2, 0),
            (2, 0),
            (2, 10),
            (2, 0),
            (1, 500),
            (1, 800),
            (1, 800),
        ]);
        plan.extend([(0, 100), (1, 100), (0, 100), (1, 100), (2, 1), (2, 1)]);
        plan.extend([(1, 1472); 50]);
        plan.push((1, 1471));
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let mut results = Vec::new();
            for (send, recv) in [(true, true), (true, false), (false, true), (false, false)] {
                let Some(o) = exchange(local, send, recv, 65536, 3, &plan, 128, |_| {}) else {
                    break;
                };
                eprintln!(
                    "{local} offload {send}/{recv}: {:?} {:?}",
                    o.messages, o.gro
                );
                assert!(send || !o.gso);
                results.push(o.received);
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]));
        }
    }

    #[test]
    fn gro_splits_a_gso_burst_into_the_original_datagrams() {
        let plan = one_peer_plan();
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Some(on) = exchange(local, true, true, 65536, 1, &plan, 128, |_| {}) else {
                continue;
            };
            eprintln!(
                "{local}: GSO {} GRO {}: {} datagrams in {} messages",
                on.gso,
                on.gro[0],
                plan.len(),
                on.messages[0]
            );
            if on.gso && on.gro[0] {
                assert!(on.messages[0] < plan.len() / 10, "coalesced");
            }
            let off = exchange(local, false, false, 65536, 1, &plan, 128, |_| {}).unwrap();
            assert!(!off.gro[0] && !off.gso);
            assert_eq!(off.messages[0], plan.len());
            assert_eq!(on.received, off.received);
        }
    }

    #[test]
    fn small_receive_slots_never_turn_gro_on() {
        let plan = vec![(0, 100); 40];
        let o = exchange("127.0.0.1:0", true, true, 1500, 1, &plan, 40, |_| {}).unwrap();
        assert!(!o.gro[0]);
        assert_eq!(o.messages[0], plan.len());
    }

    /// A run the kernel refuses because of its destination (port 0: `EINVAL` with or
    /// without GSO) is skipped datagram by datagram and does not turn GSO off.
    #[cfg(target_os = "linux")]
    #[test]
    fn refused_destination_keeps_gso() {
        let opts = SocketOptions::default();
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let gso = a.gso_enabled();
        let nowhere: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut out = SendBatch::new(16, 1500);
        for k in 0..16 {
            let to = if k < 6 { nowhere } else { b.local_addr() };
            out.slot_mut().unwrap()[..500].copy_from_slice(&payload(k, 500));
            out.push(to, 500);
        }
        let mut sent = 0;
        for _ in 0..1000 {
            sent += a.send_batch(&mut out).unwrap();
            if out.pending() == 0 {
                break;
            }
        }
        assert_eq!((sent, out.failed()), (10, 6));
        assert_eq!(a.gso_enabled(), gso);
        let mut inb = RecvBatch::new(64, 65536);
        let (got, _) = recv_n(&b, &mut inb, 10, a.local_addr());
        assert!(got == (6..16).map(|k| payload(k, 500)).collect::<Vec<_>>());
    }

    /// Searches for GSO runs made on this thread so far (none where there is no GSO).
    fn run_searches() -> u64 {
        #[cfg(target_os = "linux")]
        let n = sys::RUN_SEARCHES.with(std::cell::Cell::get);
        #[cfg(not(target_os = "linux"))]
        let n = 0;
        n
    }

    /// A batch of one datagram goes as one plain message without a search for GSO runs, and
    /// a refused one is skipped without turning GSO off. The search would send the same
    /// message (a run of one carries no segment size), so only a test counter of searches
    /// tells the two paths apart. A refused datagram followed by one more shows the counter
    /// at work and the single-datagram path taken for the last datagram of a batch.
    #[test]
    fn single_datagrams_are_sent_or_skipped_alone() {
        let opts = SocketOptions::default();
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let gso = a.gso_enabled();
        let nowhere: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut out = SendBatch::new(4, 1500);
        for (k, to) in [b.local_addr(), nowhere, b.local_addr()]
            .into_iter()
            .enumerate()
        {
            out.slot_mut().unwrap()[..100].copy_from_slice(&payload(k, 100));
            out.push(to, 100);
            let sent = a.send_batch(&mut out).unwrap();
            assert_eq!(sent, usize::from(to != nowhere));
            assert_eq!(out.pending(), 0);
        }
        assert_eq!((out.messages_sent(), out.failed()), (2, 1));
        assert_eq!(a.gso_enabled(), gso);
        assert_eq!(run_searches(), 0, "single datagrams skip the search");
        let mut inb = RecvBatch::new(8, 65536);
        let (got, _) = recv_n(&b, &mut inb, 2, a.local_addr());
        assert!(got == vec![payload(0, 100), payload(2, 100)]);

        // A refused datagram, then one to `b`, in one call: a search (where GSO is on) puts
        // the refused one first; after it is skipped, the one left goes plain.
        for (k, to) in [nowhere, b.local_addr()].into_iter().enumerate() {
            out.slot_mut().unwrap()[..100].copy_from_slice(&payload(3 + k, 100));
            out.push(to, 100);
        }
        assert_eq!(a.send_batch(&mut out).unwrap(), 1);
        assert_eq!(
            (out.pending(), out.messages_sent(), out.failed()),
            (0, 3, 2)
        );
        let searches = run_searches();
        assert_eq!(
            searches,
            u64::from(gso),
            "one search, none for the last one"
        );
        assert_eq!(a.gso_enabled(), gso);
        let (got, _) = recv_n(&b, &mut inb, 1, a.local_addr());
        assert!(got == vec![payload(4, 100)]);
    }

    /// `SO_NO_CHECK` makes the kernel refuse segmented sends with `EINVAL`: the socket must
    /// fall back for good and still deliver every datagram exactly once.
    #[cfg(target_os = "linux")]
    #[test]
    #[allow(unsafe_code)]
    fn refused_gso_falls_back_without_loss_or_duplicates() {
        use std::os::fd::AsRawFd;
        const SO_NO_CHECK: libc::c_int = 11;
        let mut had_gso = false;
        let no_check = |a: &UdpSocket| {
            had_gso = a.gso_enabled();
            let one: libc::c_int = 1;
            // SAFETY: a valid socket; the kernel reads one int from a live local.
            let ret = unsafe {
                libc::setsockopt(
                    a.io.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_NO_CHECK,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(ret, 0);
        };
        let plan = one_peer_plan();
        let o = exchange("127.0.0.1:0", true, true, 65536, 1, &plan, 128, no_check).unwrap();
        eprintln!("GSO before: {had_gso}, after: {}", o.gso);
        assert!(!o.gso, "fell back");
    }
}
