//! A cursor that writes into a caller-provided buffer.

use super::WireError;
use super::varint;

/// Writes into a caller-provided buffer. Every `put_*` checks the room left first: when the
/// value does not fit it answers [`WireError::BufferTooSmall`] and writes nothing, so the
/// position is unchanged.
///
/// ```
/// use surely::wire::{WireError, Writer};
/// let mut buf = [0u8; 4];
/// let mut w = Writer::new(&mut buf);
/// w.put_u8(7).unwrap();
/// w.put_varint(300).unwrap(); // two bytes, the shortest form
/// assert_eq!(w.put_u32(1), Err(WireError::BufferTooSmall));
/// assert_eq!(w.position(), 3);
/// assert_eq!(buf, [7, 0x41, 0x2c, 0]);
/// ```
#[derive(Debug)]
pub struct Writer<'a> {
    /// The bytes not written yet.
    rest: &'a mut [u8],
    /// Number of bytes written so far.
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer at the start of `buf`.
    #[inline]
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { rest: buf, pos: 0 }
    }

    /// Number of bytes written so far.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Number of bytes that can still be written.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Writes one byte.
    #[inline]
    pub fn put_u8(&mut self, v: u8) -> Result<(), WireError> {
        self.put_array([v])
    }

    /// Writes a big-endian `u32`.
    pub fn put_u32(&mut self, v: u32) -> Result<(), WireError> {
        self.put_array(v.to_be_bytes())
    }

    /// Writes a big-endian `u64`.
    pub fn put_u64(&mut self, v: u64) -> Result<(), WireError> {
        self.put_array(v.to_be_bytes())
    }

    /// Writes a variable-length integer in its shortest form. A value above
    /// [`MAX_VARINT`](super::varint::MAX_VARINT) is refused with [`WireError::ValueTooLarge`].
    #[inline(always)]
    pub fn put_varint(&mut self, v: u64) -> Result<(), WireError> {
        // The length prefix goes into the two high bits of the first byte; the casts keep
        // exactly the bits of the form chosen.
        if v <= varint::MAX_1 {
            self.put_array([v as u8])
        } else if v <= varint::MAX_2 {
            self.put_array((v as u16 | 0b01 << 14).to_be_bytes())
        } else if v <= varint::MAX_4 {
            self.put_array((v as u32 | 0b10 << 30).to_be_bytes())
        } else if v <= varint::MAX_VARINT {
            self.put_array((v | 0b11 << 62).to_be_bytes())
        } else {
            Err(WireError::ValueTooLarge)
        }
    }

    /// Writes `s` as is.
    #[inline]
    pub fn put_slice(&mut self, s: &[u8]) -> Result<(), WireError> {
        let dst = self.reserve(s.len())?;
        dst.copy_from_slice(s);
        Ok(())
    }

    /// Writes `n` zero bytes.
    pub fn put_zeros(&mut self, n: usize) -> Result<(), WireError> {
        self.reserve(n)?.fill(0);
        Ok(())
    }

    /// Advances past the next `n` bytes and returns a writer over them, or fails without
    /// moving.
    #[inline]
    pub(super) fn split_off(&mut self, n: usize) -> Result<Writer<'a>, WireError> {
        self.reserve(n).map(Writer::new)
    }

    /// Advances past the next `N` bytes and returns them, to be filled in later, or fails
    /// without moving.
    #[inline]
    pub(super) fn reserve_array<const N: usize>(&mut self) -> Result<&'a mut [u8; N], WireError> {
        self.reserve(N)?
            .try_into()
            .map_err(|_| WireError::BufferTooSmall)
    }

    /// Writes the `N` bytes of `bytes`, or fails without moving.
    #[inline]
    pub(super) fn put_array<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), WireError> {
        self.reserve(N)?.copy_from_slice(&bytes);
        Ok(())
    }

    /// Advances past the next `n` bytes and returns them, or fails without moving.
    #[inline]
    fn reserve(&mut self, n: usize) -> Result<&'a mut [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::BufferTooSmall);
        }
        let (dst, rest) = std::mem::take(&mut self.rest).split_at_mut(n);
        self.rest = rest;
        self.pos += n;
        Ok(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_put_is_all_or_nothing() {
        let mut buf = [0xaa; 3];
        let mut w = Writer::new(&mut buf);
        assert_eq!(w.put_u32(1), Err(WireError::BufferTooSmall));
        assert_eq!(w.put_u64(1), Err(WireError::BufferTooSmall));
        assert_eq!(w.put_varint(1 << 20), Err(WireError::BufferTooSmall));
        assert_eq!(w.put_zeros(4), Err(WireError::BufferTooSmall));
        assert_eq!(w.put_zeros(usize::MAX), Err(WireError::BufferTooSmall));
        assert_eq!(w.put_slice(&[1, 2, 3, 4]), Err(WireError::BufferTooSmall));
        assert_eq!(w.position(), 0);
        assert_eq!(w.remaining(), 3);
        w.put_zeros(1).unwrap();
        w.put_varint(64).unwrap();
        assert_eq!(w.remaining(), 0);
        assert_eq!(w.put_u8(1), Err(WireError::BufferTooSmall));
        assert_eq!(buf, [0, 0x40, 0x40]);
    }

    #[test]
    fn fixed_width_writes_are_big_endian() {
        let mut buf = [0u8; 12];
        let mut w = Writer::new(&mut buf);
        w.put_u32(0x0102_0304).unwrap();
        w.put_u64(0x0506_0708_090a_0b0c).unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }
}
