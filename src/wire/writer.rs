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
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer at the start of `buf`.
    #[inline]
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    /// Number of bytes written so far.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Number of bytes that can still be written.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Writes one byte.
    #[inline]
    pub fn put_u8(&mut self, v: u8) -> Result<(), WireError> {
        self.put_slice(&[v])
    }

    /// Writes a big-endian `u32`.
    pub fn put_u32(&mut self, v: u32) -> Result<(), WireError> {
        self.put_slice(&v.to_be_bytes())
    }

    /// Writes a big-endian `u64`.
    pub fn put_u64(&mut self, v: u64) -> Result<(), WireError> {
        self.put_slice(&v.to_be_bytes())
    }

    /// Writes a variable-length integer in its shortest form. A value above
    /// [`MAX_VARINT`](super::varint::MAX_VARINT) is refused with [`WireError::ValueTooLarge`].
    #[inline]
    pub fn put_varint(&mut self, v: u64) -> Result<(), WireError> {
        if let Ok(b @ 0..0x40) = u8::try_from(v) {
            // The one-byte form, by far the most common.
            return self.put_u8(b);
        }
        if v > varint::MAX_VARINT {
            return Err(WireError::ValueTooLarge);
        }
        let (bytes, len) = varint::encode(v);
        let start = bytes.len().saturating_sub(len);
        self.put_slice(bytes.get(start..).unwrap_or_default())
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

    /// Advances past the next `n` bytes and returns them, or fails without moving.
    #[inline]
    fn reserve(&mut self, n: usize) -> Result<&mut [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall)?;
        self.pos = end;
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
