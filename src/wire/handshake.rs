//! Handshake packets: INITIAL, RETRY, ACCEPT and REFUSE (packet types `0x02..=0x05`).
//!
//! They share the 14-byte [`Header`] and the integrity tag with DATA packets; only the body
//! differs. Layouts (after the header, before the tag; `u64` big-endian, `v` a varint):
//!
//! ```text
//! INITIAL  0x02  client -> server; header conn_id = 0, packet number = attempt (0, 1, ...)
//!   u64  client_cid          nonzero: the id the server puts on packets for the client
//!   v    max_datagram_size   the client's, 256..=65507
//!   v    initial_packet_number
//!   v    initial_message_id
//!   u8   cookie_len          0 (no cookie) or 1..=64
//!        cookie              cookie_len bytes, echoed from a RETRY
//!        padding             zero bytes, so that the whole datagram is >= 1200 bytes
//!
//! RETRY    0x03  server -> client; header conn_id = client_cid, packet number = attempt echoed
//!   u8   cookie_len          1..=64
//!        cookie
//!
//! ACCEPT   0x04  server -> client; header conn_id = client_cid, packet number = attempt echoed
//!   u64  server_cid          nonzero: the id the client puts on DATA packets for the server
//!   v    max_datagram_size   the size both ends use, 256..=65507
//!
//! REFUSE   0x05  server -> client; header conn_id = client_cid, packet number = attempt echoed
//!   u8   reason              see RefuseReason
//! ```
//!
//! Nothing may follow the last field (except INITIAL's zero padding): a datagram with trailing
//! bytes is rejected whole.
//!
//! ```
//! use surely::wire::{Crc32, HandshakePacket, MIN_INITIAL_DATAGRAM, TransportParams};
//!
//! let params = TransportParams {
//!     max_datagram_size: 1200,
//!     initial_packet_number: 0,
//!     initial_message_id: 0,
//! };
//! let initial = HandshakePacket::Initial { attempt: 0, client_cid: 7, params, cookie: None };
//! let mut buf = [0u8; 1500];
//! let n = initial.encode(&mut buf, &Crc32)?;
//! assert_eq!(n, MIN_INITIAL_DATAGRAM);
//! assert_eq!(HandshakePacket::decode(&buf[..n], &Crc32)?, initial);
//!
//! let retry = HandshakePacket::Retry { client_cid: 7, attempt: 0, cookie: &[9; 13] };
//! let n = retry.encode(&mut buf, &Crc32)?;
//! assert_eq!(n, 32); // far smaller than the INITIAL that caused it
//! assert_eq!(HandshakePacket::decode(&buf[..n], &Crc32)?, retry);
//! # Ok::<(), surely::wire::HandshakeError>(())
//! ```

use std::fmt;

use crate::limits;

use super::{
    HEADER_LEN, Header, Integrity, MAX_DATAGRAM, PacketType, Reader, WireError, Writer, open, seal,
};

/// The smallest INITIAL datagram, tag included. Padding the first packet of a handshake makes
/// a spoofed INITIAL cost the attacker more than any answer costs the server.
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
pub use crate::limits::MAX_COOKIE_LEN;
/// The smallest `max_datagram_size` an end may announce.
pub const MIN_ANNOUNCED_DATAGRAM: u64 = 256;

/// Transport settings a client announces in its INITIAL. The two ends must agree on the initial
/// packet number and message id; each uses the smaller of the two datagram sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportParams {
    /// Largest datagram the client sends and accepts (256..=65507).
    pub max_datagram_size: u64,
    /// First packet number of both directions.
    pub initial_packet_number: u64,
    /// First message id of both id spaces.
    pub initial_message_id: u64,
}

/// Why a server refused a handshake (REFUSE's reason byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// `1`: the server has as many connections as its limit allows.
    ServerFull,
    /// `2`: the endpoint does not accept incoming connections.
    NotAccepting,
    /// `3`: the client's transport parameters cannot be used with the server's.
    Incompatible,
    /// Any other code (reserved for later versions).
    Other(u8),
}

impl RefuseReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            RefuseReason::ServerFull => 1,
            RefuseReason::NotAccepting => 2,
            RefuseReason::Incompatible => 3,
            RefuseReason::Other(c) => c,
        }
    }

    /// The reason for a wire code.
    pub fn from_code(code: u8) -> RefuseReason {
        match code {
            1 => RefuseReason::ServerFull,
            2 => RefuseReason::NotAccepting,
            3 => RefuseReason::Incompatible,
            c => RefuseReason::Other(c),
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::ServerFull => f.write_str("server full"),
            RefuseReason::NotAccepting => f.write_str("not accepting connections"),
            RefuseReason::Incompatible => f.write_str("incompatible transport parameters"),
            RefuseReason::Other(c) => write!(f, "refused (code {c})"),
        }
    }
}

/// A handshake packet, parsed or to be written. Cookies borrow from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakePacket<'a> {
    /// Client to server: open a connection (again, with a cookie, after a RETRY).
    Initial {
        /// Number of INITIALs the client sent before this one.
        attempt: u32,
        /// The id the server must put on packets for the client (nonzero).
        client_cid: u64,
        /// The client's transport settings.
        params: TransportParams,
        /// The cookie from the server's RETRY, if the client has one.
        cookie: Option<&'a [u8]>,
    },
    /// Server to client: prove you own your address by echoing this cookie.
    Retry {
        /// The client's id, from the INITIAL.
        client_cid: u64,
        /// The INITIAL's attempt number, echoed.
        attempt: u32,
        /// The cookie (1..=64 bytes).
        cookie: &'a [u8],
    },
    /// Server to client: the connection exists.
    Accept {
        /// The client's id, from the INITIAL.
        client_cid: u64,
        /// The INITIAL's attempt number, echoed.
        attempt: u32,
        /// The id the client must put on DATA packets for the server (nonzero).
        server_cid: u64,
        /// The datagram size both ends use.
        max_datagram_size: u64,
    },
    /// Server to client: no connection, for this reason.
    Refuse {
        /// The client's id, from the INITIAL.
        client_cid: u64,
        /// The INITIAL's attempt number, echoed.
        attempt: u32,
        /// Why.
        reason: RefuseReason,
    },
}

/// Why a handshake packet is malformed or could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Length, tag, version, packet type or a field failed to parse.
    Wire(WireError),
    /// A DATA packet, not a handshake packet.
    NotHandshake,
    /// An INITIAL datagram shorter than [`MIN_INITIAL_DATAGRAM`] (its length is given).
    InitialTooShort(usize),
    /// A connection id that must be nonzero is zero.
    ZeroConnectionId,
    /// A cookie longer than [`MAX_COOKIE_LEN`], or an empty one in a RETRY.
    BadCookieLength(usize),
    /// A datagram size outside 256..=65507.
    BadDatagramSize(u64),
    /// Bytes after the last field (other than INITIAL's zero padding).
    TrailingBytes,
    /// An INITIAL whose header connection id is not zero.
    UnexpectedConnectionId,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Wire(e) => write!(f, "malformed handshake packet: {e}"),
            HandshakeError::NotHandshake => f.write_str("not a handshake packet"),
            HandshakeError::InitialTooShort(n) => {
                write!(f, "INITIAL of {n} bytes, below {MIN_INITIAL_DATAGRAM}")
            }
            HandshakeError::ZeroConnectionId => f.write_str("zero connection id"),
            HandshakeError::BadCookieLength(n) => write!(f, "cookie of {n} bytes"),
            HandshakeError::BadDatagramSize(n) => write!(f, "datagram size {n} out of range"),
            HandshakeError::TrailingBytes => f.write_str("unexpected bytes in handshake packet"),
            HandshakeError::UnexpectedConnectionId => {
                f.write_str("INITIAL with a nonzero header connection id")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<WireError> for HandshakeError {
    fn from(e: WireError) -> Self {
        HandshakeError::Wire(e)
    }
}

impl<'a> HandshakePacket<'a> {
    /// The packet type of this packet.
    pub fn packet_type(&self) -> PacketType {
        match self {
            HandshakePacket::Initial { .. } => PacketType::Initial,
            HandshakePacket::Retry { .. } => PacketType::Retry,
            HandshakePacket::Accept { .. } => PacketType::Accept,
            HandshakePacket::Refuse { .. } => PacketType::Refuse,
        }
    }

    /// Opens a datagram (length, tag, header: see [`open`]) and parses it.
    pub fn decode(
        datagram: &'a [u8],
        integrity: &dyn Integrity,
    ) -> Result<HandshakePacket<'a>, HandshakeError> {
        let (header, body) = open(datagram, integrity)?;
        Self::parse(&header, body, datagram.len())
    }

    /// Parses the body of an opened datagram whose header is `header` and whose whole length
    /// (header and tag included) is `datagram_len`.
    pub fn parse(
        header: &Header,
        body: &'a [u8],
        datagram_len: usize,
    ) -> Result<HandshakePacket<'a>, HandshakeError> {
        let mut r = Reader::new(body);
        let attempt = header.packet_number;
        let packet = match header.packet_type {
            PacketType::Data => return Err(HandshakeError::NotHandshake),
            PacketType::Initial => {
                if datagram_len < MIN_INITIAL_DATAGRAM {
                    return Err(HandshakeError::InitialTooShort(datagram_len));
                }
                if header.conn_id != 0 {
                    return Err(HandshakeError::UnexpectedConnectionId);
                }
                let client_cid = nonzero(r.u64()?)?;
                let params = TransportParams {
                    max_datagram_size: datagram_size(r.varint()?)?,
                    initial_packet_number: r.varint()?,
                    initial_message_id: r.varint()?,
                };
                let cookie = match usize::from(r.u8()?) {
                    0 => None,
                    n if !limits::cookie_len_ok(n) => {
                        return Err(HandshakeError::BadCookieLength(n));
                    }
                    n => Some(r.take(n)?),
                };
                if r.rest().iter().any(|&b| b != 0) {
                    return Err(HandshakeError::TrailingBytes);
                }
                HandshakePacket::Initial {
                    attempt,
                    client_cid,
                    params,
                    cookie,
                }
            }
            PacketType::Retry => {
                let n = usize::from(r.u8()?);
                if n == 0 || !limits::cookie_len_ok(n) {
                    return Err(HandshakeError::BadCookieLength(n));
                }
                HandshakePacket::Retry {
                    client_cid: nonzero(header.conn_id)?,
                    attempt,
                    cookie: r.take(n)?,
                }
            }
            PacketType::Accept => HandshakePacket::Accept {
                client_cid: nonzero(header.conn_id)?,
                attempt,
                server_cid: nonzero(r.u64()?)?,
                max_datagram_size: datagram_size(r.varint()?)?,
            },
            PacketType::Refuse => HandshakePacket::Refuse {
                client_cid: nonzero(header.conn_id)?,
                attempt,
                reason: RefuseReason::from_code(r.u8()?),
            },
        };
        if !r.is_empty() {
            return Err(HandshakeError::TrailingBytes);
        }
        Ok(packet)
    }

    /// Writes the whole datagram (header, body, INITIAL padding, tag) into `buf` and returns
    /// its length. Refuses to write anything [`parse`](Self::parse) would reject.
    pub fn encode(
        &self,
        buf: &mut [u8],
        integrity: &dyn Integrity,
    ) -> Result<usize, HandshakeError> {
        let tag_len = integrity.tag_len();
        let mut w = Writer::new(buf);
        let (conn_id, attempt) = match *self {
            HandshakePacket::Initial { attempt, .. } => (0, attempt),
            HandshakePacket::Retry {
                client_cid,
                attempt,
                ..
            }
            | HandshakePacket::Accept {
                client_cid,
                attempt,
                ..
            }
            | HandshakePacket::Refuse {
                client_cid,
                attempt,
                ..
            } => (nonzero(client_cid)?, attempt),
        };
        Header {
            packet_type: self.packet_type(),
            conn_id,
            packet_number: attempt,
        }
        .emit(&mut w)?;
        match *self {
            HandshakePacket::Initial {
                client_cid,
                params,
                cookie,
                ..
            } => {
                w.put_u64(nonzero(client_cid)?)?;
                w.put_varint(datagram_size(params.max_datagram_size)?)?;
                w.put_varint(params.initial_packet_number)?;
                w.put_varint(params.initial_message_id)?;
                let cookie = cookie.unwrap_or_default();
                put_cookie(&mut w, cookie, true)?;
                let body_end = MIN_INITIAL_DATAGRAM.saturating_sub(tag_len);
                w.put_zeros(body_end.saturating_sub(w.position()))?;
            }
            HandshakePacket::Retry { cookie, .. } => put_cookie(&mut w, cookie, false)?,
            HandshakePacket::Accept {
                server_cid,
                max_datagram_size,
                ..
            } => {
                w.put_u64(nonzero(server_cid)?)?;
                w.put_varint(datagram_size(max_datagram_size)?)?;
            }
            HandshakePacket::Refuse { reason, .. } => w.put_u8(reason.code())?,
        }
        let len = w.position();
        debug_assert!(len > HEADER_LEN);
        Ok(seal(buf, len, integrity)?)
    }
}

fn nonzero(cid: u64) -> Result<u64, HandshakeError> {
    if cid == 0 {
        Err(HandshakeError::ZeroConnectionId)
    } else {
        Ok(cid)
    }
}

fn datagram_size(v: u64) -> Result<u64, HandshakeError> {
    if (MIN_ANNOUNCED_DATAGRAM..=MAX_DATAGRAM as u64).contains(&v) {
        Ok(v)
    } else {
        Err(HandshakeError::BadDatagramSize(v))
    }
}

/// Writes `cookie_len` and the cookie; an empty cookie is allowed only in an INITIAL.
fn put_cookie(w: &mut Writer<'_>, cookie: &[u8], may_be_empty: bool) -> Result<(), HandshakeError> {
    let len = cookie.len();
    if !limits::cookie_len_ok(len) || (len == 0 && !may_be_empty) {
        return Err(HandshakeError::BadCookieLength(len));
    }
    // MAX_COOKIE_LEN fits in a byte.
    w.put_u8(len as u8)?;
    w.put_slice(cookie)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Crc32;
    use super::*;

    const PARAMS: TransportParams = TransportParams {
        max_datagram_size: 1400,
        initial_packet_number: 5,
        initial_message_id: 1 << 20,
    };

    fn encode(p: &HandshakePacket<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; 2000];
        let n = p.encode(&mut buf, &Crc32).unwrap();
        buf.truncate(n);
        buf
    }

    fn reseal(mut d: Vec<u8>) -> Vec<u8> {
        let n = d.len() - 4;
        seal(&mut d, n, &Crc32).unwrap();
        d
    }

    #[test]
    fn every_packet_round_trips() {
        let cookie = [0xab; 13];
        let packets = [
            HandshakePacket::Initial {
                attempt: 3,
                client_cid: u64::MAX,
                params: PARAMS,
                cookie: None,
            },
            HandshakePacket::Initial {
                attempt: 0,
                client_cid: 1,
                params: PARAMS,
                cookie: Some(&cookie),
            },
            HandshakePacket::Retry {
                client_cid: 9,
                attempt: 1,
                cookie: &cookie,
            },
            HandshakePacket::Accept {
                client_cid: 9,
                attempt: 2,
                server_cid: 0x1234_5678_9abc_def0,
                max_datagram_size: 1200,
            },
            HandshakePacket::Refuse {
                client_cid: 9,
                attempt: 0,
                reason: RefuseReason::ServerFull,
            },
            HandshakePacket::Refuse {
                client_cid: 9,
                attempt: 0,
                reason: RefuseReason::Other(200),
            },
        ];
        for p in packets {
            let d = encode(&p);
            assert_eq!(HandshakePacket::decode(&d, &Crc32), Ok(p));
            if matches!(p, HandshakePacket::Initial { .. }) {
                assert_eq!(d.len(), MIN_INITIAL_DATAGRAM);
            } else {
                assert!(d.len() <= 32, "{} bytes", d.len());
            }
        }
    }

    #[test]
    fn layout_is_byte_exact() {
        let d = encode(&HandshakePacket::Accept {
            client_cid: 0x0102_0304_0506_0708,
            attempt: 1,
            server_cid: 0x1112_1314_1516_1718,
            max_datagram_size: 1200,
        });
        assert_eq!(
            &d[..d.len() - 4],
            &[
                1, 4, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, // header
                0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // server cid
                0x44, 0xb0, // 1200 as a varint
            ]
        );
        let d = encode(&HandshakePacket::Refuse {
            client_cid: 2,
            attempt: 0,
            reason: RefuseReason::NotAccepting,
        });
        assert_eq!(d.len(), 19);
        assert_eq!(&d[..15], &[1, 5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn malformed_packets_are_rejected_with_a_named_error() {
        let initial = encode(&HandshakePacket::Initial {
            attempt: 0,
            client_cid: 7,
            params: PARAMS,
            cookie: None,
        });
        let retry = encode(&HandshakePacket::Retry {
            client_cid: 7,
            attempt: 0,
            cookie: &[1, 2, 3],
        });
        let edit = |d: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
            let mut d = d.to_vec();
            f(&mut d);
            reseal(d)
        };
        let short_initial = reseal(initial[..initial.len() - 5].to_vec());
        let table: Vec<(Vec<u8>, HandshakeError)> = vec![
            (short_initial, HandshakeError::InitialTooShort(1195)),
            (
                edit(&initial, &|d| d[14..22].fill(0)),
                HandshakeError::ZeroConnectionId,
            ),
            (
                edit(&initial, &|d| d[1000] = 1),
                HandshakeError::TrailingBytes,
            ),
            (
                edit(&initial, &|d| d[9] = 1),
                HandshakeError::UnexpectedConnectionId,
            ),
            (
                edit(&initial, &|d| d[29] = 65),
                HandshakeError::BadCookieLength(65),
            ),
            (
                edit(&initial, &|d| {
                    d[22] = 0x40;
                    d[23] = 0x10;
                }),
                HandshakeError::BadDatagramSize(16),
            ),
            (
                edit(&retry, &|d| d[14] = 0),
                HandshakeError::BadCookieLength(0),
            ),
            (edit(&retry, &|d| d[14] = 2), HandshakeError::TrailingBytes),
            (
                edit(&retry, &|d| d[14] = 9),
                HandshakeError::Wire(WireError::Truncated),
            ),
            (
                edit(&retry, &|d| d[2..10].fill(0)),
                HandshakeError::ZeroConnectionId,
            ),
            (edit(&retry, &|d| d[1] = 1), HandshakeError::NotHandshake),
        ];
        for (d, err) in table {
            assert_eq!(HandshakePacket::decode(&d, &Crc32), Err(err), "{d:?}");
        }
    }

    #[test]
    fn encode_refuses_what_parse_rejects() {
        let mut buf = [0u8; 2000];
        let bad = [
            HandshakePacket::Retry {
                client_cid: 1,
                attempt: 0,
                cookie: &[],
            },
            HandshakePacket::Retry {
                client_cid: 1,
                attempt: 0,
                cookie: &[0; 65],
            },
            HandshakePacket::Accept {
                client_cid: 0,
                attempt: 0,
                server_cid: 1,
                max_datagram_size: 1200,
            },
            HandshakePacket::Accept {
                client_cid: 1,
                attempt: 0,
                server_cid: 1,
                max_datagram_size: 100,
            },
        ];
        for p in bad {
            assert!(p.encode(&mut buf, &Crc32).is_err(), "{p:?}");
        }
        let initial = HandshakePacket::Initial {
            attempt: 0,
            client_cid: 1,
            params: PARAMS,
            cookie: None,
        };
        assert_eq!(
            initial.encode(&mut buf[..1000], &Crc32),
            Err(HandshakeError::Wire(WireError::BufferTooSmall))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = crate::Rng::new(11);
        for _ in 0..20_000 {
            let len = rng.below(1300) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if d.len() >= 19 {
                d[0] = 1;
                d[1] = 2 + rng.below(4) as u8;
                d = reseal(d);
            }
            let _ = HandshakePacket::decode(&d, &Crc32);
        }
    }
}
