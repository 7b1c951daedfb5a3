//! The fixed 14-byte packet header.
//!
//! ```text
//! offset  size  field
//! 0       1     version        = VERSION
//! 1       1     packet type    0x01 DATA, 0x02 INITIAL, 0x03 RETRY, 0x04 ACCEPT, 0x05 REFUSE;
//!                              0x06..=0x0F reserved
//! 2       8     connection id  u64, big-endian
//! 10      4     packet number  low 32 bits of the packet number, big-endian
//! ```

use super::{HEADER_LEN, Reader, VERSION, WireError, Writer};

/// Byte ranges of the header fields, named once.
mod field {
    use std::ops::Range;

    pub(super) const VERSION: usize = 0;
    pub(super) const PACKET_TYPE: usize = 1;
    pub(super) const CONN_ID: Range<usize> = 2..10;
    pub(super) const PACKET_NUMBER: Range<usize> = 10..14;
}

// The fields are back to back and fill the header exactly.
const _: () = assert!(field::PACKET_TYPE == field::VERSION + 1);
const _: () = assert!(field::CONN_ID.start == field::PACKET_TYPE + 1);
const _: () = assert!(field::PACKET_NUMBER.start == field::CONN_ID.end);
const _: () = assert!(field::PACKET_NUMBER.end == HEADER_LEN);

/// The kind of a packet, from the header's second byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum PacketType {
    /// A packet of frames on an established connection.
    Data = 1,
    /// Handshake: a client opens a connection (see [`HandshakePacket`](super::HandshakePacket)).
    Initial = 2,
    /// Handshake: the server asks the client to echo a cookie.
    Retry = 3,
    /// Handshake: the server created the connection.
    Accept = 4,
    /// Handshake: the server refused the connection.
    Refuse = 5,
}

impl PacketType {
    /// Parses the wire code. `0x06..=0x0F` are reserved for later handshake packets and, like
    /// every other value, are not a packet type yet.
    fn from_u8(v: u8) -> Option<PacketType> {
        match v {
            1 => Some(PacketType::Data),
            2 => Some(PacketType::Initial),
            3 => Some(PacketType::Retry),
            4 => Some(PacketType::Accept),
            5 => Some(PacketType::Refuse),
            _ => None,
        }
    }
}

/// The packet header.
///
/// ```
/// use surely::wire::{HEADER_LEN, Header, PacketType, Reader, Writer};
/// let h = Header { packet_type: PacketType::Data, conn_id: 7, packet_number: 42 };
/// let mut buf = [0u8; HEADER_LEN];
/// h.emit(&mut Writer::new(&mut buf)).unwrap();
/// assert_eq!(Header::parse(&mut Reader::new(&buf)), Ok(h));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The packet type.
    pub packet_type: PacketType,
    /// The connection id, chosen by the receiver of the packet.
    pub conn_id: u64,
    /// The low 32 bits of the packet number (see [`PacketNumber`](crate::PacketNumber)).
    pub packet_number: u32,
}

impl Header {
    /// Reads a header: [`HEADER_LEN`] bytes, checked once, then the fields.
    ///
    /// Errors: [`WireError::Truncated`], [`WireError::BadVersion`],
    /// [`WireError::UnknownPacketType`].
    pub fn parse(r: &mut Reader<'_>) -> Result<Header, WireError> {
        let bytes = r.take(HEADER_LEN)?;
        let version = be(bytes, field::VERSION..field::VERSION + 1)?;
        let packet_type = be(bytes, field::PACKET_TYPE..field::PACKET_TYPE + 1)?;
        let conn_id = be(bytes, field::CONN_ID)?;
        let packet_number = be(bytes, field::PACKET_NUMBER)?;
        // The casts below keep exactly the bits of fields that are 1 and 4 bytes wide.
        let version = version as u8;
        if version != VERSION {
            return Err(WireError::BadVersion(version));
        }
        let packet_type = PacketType::from_u8(packet_type as u8)
            .ok_or(WireError::UnknownPacketType(packet_type as u8))?;
        Ok(Header {
            packet_type,
            conn_id,
            packet_number: packet_number as u32,
        })
    }

    /// Writes the header ([`HEADER_LEN`] bytes), or nothing if it does not fit.
    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let mut bytes = [0u8; HEADER_LEN];
        put(
            &mut bytes,
            field::VERSION..field::VERSION + 1,
            u64::from(VERSION),
        );
        put(
            &mut bytes,
            field::PACKET_TYPE..field::PACKET_TYPE + 1,
            self.packet_type as u64,
        );
        put(&mut bytes, field::CONN_ID, self.conn_id);
        put(
            &mut bytes,
            field::PACKET_NUMBER,
            u64::from(self.packet_number),
        );
        w.put_slice(&bytes)
    }
}

/// The big-endian value of `bytes[range]` (at most 8 bytes wide).
fn be(bytes: &[u8], range: std::ops::Range<usize>) -> Result<u64, WireError> {
    let field = bytes.get(range).ok_or(WireError::Truncated)?;
    Ok(field.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Stores the low bytes of `v` big-endian into `bytes[range]` (in bounds by construction).
fn put(bytes: &mut [u8; HEADER_LEN], range: std::ops::Range<usize>, v: u64) {
    if let Some(field) = bytes.get_mut(range) {
        let be = v.to_be_bytes();
        let skip = be.len().saturating_sub(field.len());
        for (dst, src) in field.iter_mut().zip(be.iter().skip(skip)) {
            *dst = *src;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_byte_exact() {
        let h = Header {
            packet_type: PacketType::Data,
            conn_id: 0x0102_0304_0506_0708,
            packet_number: 0x090a_0b0c,
        };
        let mut buf = [0u8; HEADER_LEN];
        h.emit(&mut Writer::new(&mut buf)).unwrap();
        assert_eq!(buf, [1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let mut r = Reader::new(&buf);
        assert_eq!(Header::parse(&mut r), Ok(h));
        assert!(r.is_empty());
    }

    #[test]
    fn rejects_bad_version_type_and_short_input() {
        let good = [1u8, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1];
        let mut bad_version = good;
        bad_version[0] = 2;
        let mut reserved = good;
        reserved[1] = 0x06;
        let mut zero_type = good;
        zero_type[1] = 0;
        let table: &[(&[u8], WireError)] = &[
            (&bad_version, WireError::BadVersion(2)),
            (&reserved, WireError::UnknownPacketType(6)),
            (&zero_type, WireError::UnknownPacketType(0)),
            (&good[..13], WireError::Truncated),
            (&[], WireError::Truncated),
        ];
        for (bytes, err) in table {
            assert_eq!(Header::parse(&mut Reader::new(bytes)), Err(*err));
        }
        assert!(Header::parse(&mut Reader::new(&good)).is_ok());
    }

    #[test]
    fn emit_into_a_short_buffer_writes_nothing() {
        let h = Header {
            packet_type: PacketType::Data,
            conn_id: 1,
            packet_number: 2,
        };
        let mut buf = [0u8; HEADER_LEN - 1];
        let mut w = Writer::new(&mut buf);
        assert_eq!(h.emit(&mut w), Err(WireError::BufferTooSmall));
        assert_eq!(w.position(), 0);
    }
}
