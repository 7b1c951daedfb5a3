//! A panic-free cursor over untrusted bytes.

use super::WireError;
use super::varint;

/// A cursor over a byte slice that never panics: every read checks the length first and
/// answers [`WireError::Truncated`] when the input runs out, leaving the cursor where it was.
///
/// ```
/// use surely::wire::{Reader, WireError};
/// let mut r = Reader::new(&[0x01, 0x40, 0x25, 0xff]);
/// assert_eq!(r.u8(), Ok(1));
/// assert_eq!(r.varint(), Ok(37));
/// assert_eq!(r.u32(), Err(WireError::Truncated));
/// assert_eq!(r.rest(), &[0xff]);
/// assert!(r.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// The bytes not read yet.
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Number of bytes not read yet.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Whether every byte has been read.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads one byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or(WireError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }

    /// Reads a variable-length integer in any of its forms (not only the shortest).
    #[inline]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        let (&first, rest) = self.buf.split_first().ok_or(WireError::Truncated)?;
        // The two high bits of the first byte give the length; they are masked off, and the
        // rest is the value, big-endian.
        match first >> 6 {
            0 => {
                // The one-byte form, by far the most common.
                self.buf = rest;
                Ok(u64::from(first))
            }
            1 => Ok(u64::from(u16::from_be_bytes(self.array()?) & 0x3fff)),
            2 => Ok(u64::from(u32::from_be_bytes(self.array()?) & 0x3fff_ffff)),
            _ => Ok(u64::from_be_bytes(self.array()?) & varint::MAX_VARINT),
        }
    }

    /// Reads the next `N` bytes.
    #[inline]
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (bytes, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(WireError::Truncated)?;
        self.buf = rest;
        Ok(*bytes)
    }

    /// Reads the next `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or(WireError::Truncated)?;
        self.buf = rest;
        Ok(head)
    }

    /// The next byte, without consuming it.
    #[inline]
    pub fn peek_u8(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// Consumes and returns every byte not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_reads_are_big_endian() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u32(), Ok(0x0203_0405));
        assert_eq!(r.u64(), Ok(0x0607_0809_0a0b_0c0d));
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(WireError::Truncated));
    }

    #[test]
    fn a_failed_read_consumes_nothing() {
        let bytes = [0xc0, 0, 0];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.varint(), Err(WireError::Truncated));
        assert_eq!(r.u32(), Err(WireError::Truncated));
        assert_eq!(r.u64(), Err(WireError::Truncated));
        assert_eq!(r.take(4), Err(WireError::Truncated));
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.peek_u8(), Some(0xc0));
        assert_eq!(r.take(3), Ok(&bytes[..]));
        assert_eq!(r.peek_u8(), None);
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn take_huge_lengths_is_an_error_not_a_panic() {
        let mut r = Reader::new(&[1, 2]);
        assert_eq!(r.take(usize::MAX), Err(WireError::Truncated));
        assert_eq!(r.take(0), Ok(&[] as &[u8]));
        assert_eq!(r.remaining(), 2);
    }
}
