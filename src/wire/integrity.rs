//! The integrity tag at the end of every datagram.
//!
//! Version 1 uses a CRC-32, which catches corruption but not tampering. The [`Integrity`]
//! trait is the seam where a keyed MAC or an AEAD tag will replace it in a later version: the
//! frame layer only sees [`Integrity::tag_len`], [`Integrity::seal`] and
//! [`Integrity::verify`], so it does not change.

/// Computes and checks the tag that closes a datagram.
///
/// The tag covers every byte before it (header and frames). Implementations must not panic
/// on any input.
pub trait Integrity: std::fmt::Debug + Send + Sync {
    /// Length of the tag in bytes.
    fn tag_len(&self) -> usize;

    /// Writes the tag of `data` into `tag`, which is [`tag_len`](Integrity::tag_len) bytes.
    fn seal(&self, data: &[u8], tag: &mut [u8]);

    /// Whether `tag` is the tag of `data`. A `tag` of the wrong length does not verify.
    fn verify(&self, data: &[u8], tag: &[u8]) -> bool;
}

/// CRC-32 (IEEE 802.3, as computed by `crc32fast`), sent big-endian: 4 bytes.
///
/// Under `cfg(fuzzing)` [`verify`](Integrity::verify) accepts every tag, so that a fuzzer's
/// inputs reach the header and frame parsers instead of stopping at the checksum.
///
/// ```
/// use surely::wire::{Crc32, Integrity};
/// let mut tag = [0u8; 4];
/// Crc32.seal(b"123456789", &mut tag);
/// assert_eq!(tag, 0xcbf4_3926u32.to_be_bytes()); // the CRC-32 check value
/// assert!(Crc32.verify(b"123456789", &tag));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Crc32;

/// Length of the CRC-32 tag.
const CRC_LEN: usize = 4;

impl Integrity for Crc32 {
    fn tag_len(&self) -> usize {
        CRC_LEN
    }

    fn seal(&self, data: &[u8], tag: &mut [u8]) {
        debug_assert_eq!(tag.len(), CRC_LEN);
        let crc = crc32fast::hash(data).to_be_bytes();
        for (dst, src) in tag.iter_mut().zip(crc) {
            *dst = src;
        }
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        if cfg!(fuzzing) {
            return true;
        }
        tag == crc32fast::hash(data).to_be_bytes()
    }
}

#[cfg(all(test, not(fuzzing)))]
mod tests {
    use super::*;

    #[test]
    fn wrong_length_tags_do_not_verify() {
        let mut tag = [0u8; 4];
        Crc32.seal(b"abc", &mut tag);
        assert!(Crc32.verify(b"abc", &tag));
        assert!(!Crc32.verify(b"abc", &tag[..3]));
        assert!(!Crc32.verify(b"abd", &tag));
        assert!(!Crc32.verify(b"abc", &[tag[0], tag[1], tag[2], tag[3], 0]));
    }
}
