//! QUIC variable-length integers (RFC 9000 section 16).
//!
//! The two high bits of the first byte give the encoded length (`00` = 1 byte, `01` = 2,
//! `10` = 4, `11` = 8); the remaining bits hold the value, big-endian. Encoding always uses the
//! shortest form ([`Writer::put_varint`](super::Writer::put_varint)); decoding accepts every
//! form ([`Reader::varint`](super::Reader::varint)).

/// The largest value a varint can carry: 2^62 - 1.
pub const MAX_VARINT: u64 = (1 << 62) - 1;

/// Largest value of the 1-byte form.
pub(crate) const MAX_1: u64 = (1 << 6) - 1;
/// Largest value of the 2-byte form.
pub(crate) const MAX_2: u64 = (1 << 14) - 1;
/// Largest value of the 4-byte form.
pub(crate) const MAX_4: u64 = (1 << 30) - 1;

/// Length in bytes of the shortest encoding of `v`: 1, 2, 4 or 8.
///
/// `v` must not exceed [`MAX_VARINT`] (checked in debug builds; release builds answer 8, and
/// the writer refuses the value).
#[inline]
pub fn varint_len(v: u64) -> usize {
    debug_assert!(v <= MAX_VARINT, "varint out of range: {v}");
    if v <= MAX_1 {
        1
    } else if v <= MAX_2 {
        2
    } else if v <= MAX_4 {
        4
    } else {
        8
    }
}

/// The RFC 9000 encoding of `v` in `len` (1, 2, 4 or 8) bytes, shortest or not: the two
/// length bits, then the value, big-endian. Written independently of [`Writer`] as a reference
/// for tests; `v` must fit the form.
///
/// [`Writer`]: super::Writer
#[cfg(test)]
pub(crate) fn reference(v: u64, len: usize) -> Vec<u8> {
    let code = u64::from(len.trailing_zeros());
    let bytes = (v | code << (8 * len - 2)).to_be_bytes();
    bytes[8 - len..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::{Reader, Writer};
    use super::*;

    fn encoded(v: u64) -> Vec<u8> {
        let mut buf = [0u8; 8];
        let mut w = Writer::new(&mut buf);
        w.put_varint(v).unwrap();
        let n = w.position();
        buf[..n].to_vec()
    }

    #[test]
    fn boundaries_use_the_shortest_form() {
        let table: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (63, &[0x3f]),
            (64, &[0x40, 0x40]),
            (16383, &[0x7f, 0xff]),
            (16384, &[0x80, 0x00, 0x40, 0x00]),
            ((1 << 30) - 1, &[0xbf, 0xff, 0xff, 0xff]),
            (1 << 30, &[0xc0, 0, 0, 0, 0x40, 0, 0, 0]),
            (MAX_VARINT, &[0xff; 8]),
        ];
        for &(v, bytes) in table {
            assert_eq!(encoded(v), bytes, "encoding of {v}");
            assert_eq!(varint_len(v), bytes.len(), "length of {v}");
            let mut r = Reader::new(bytes);
            assert_eq!(r.varint(), Ok(v), "decoding of {v}");
            assert!(r.is_empty());
        }
    }

    #[test]
    fn rfc9000_examples_decode() {
        // RFC 9000 appendix A.1.
        let table: &[(&[u8], u64)] = &[
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
            (&[0x40, 0x25], 37),
        ];
        for &(bytes, v) in table {
            assert_eq!(Reader::new(bytes).varint(), Ok(v));
        }
    }

    #[test]
    fn non_shortest_forms_are_accepted_on_decode() {
        let forms: &[&[u8]] = &[
            &[0x05],
            &[0x40, 0x05],
            &[0x80, 0, 0, 0x05],
            &[0xc0, 0, 0, 0, 0, 0, 0, 0x05],
        ];
        for bytes in forms {
            assert_eq!(Reader::new(bytes).varint(), Ok(5));
        }
    }

    proptest::proptest! {
        #[test]
        fn writer_and_reader_match_the_reference(v in 0..=MAX_VARINT, shift in 0..62u32) {
            for v in [v, v >> shift] {
                let len = varint_len(v);
                proptest::prop_assert_eq!(encoded(v), reference(v, len));
                // Every form at least as long as the shortest decodes to the value.
                for form in [1, 2, 4, 8].into_iter().filter(|&l| l >= len) {
                    let mut bytes = reference(v, form);
                    bytes.push(0xee);
                    let mut r = Reader::new(&bytes);
                    proptest::prop_assert_eq!(r.varint(), Ok(v));
                    proptest::prop_assert_eq!(r.rest(), &[0xee]);
                    proptest::prop_assert_eq!(
                        Reader::new(&bytes[..form - 1]).varint(),
                        Err(super::super::WireError::Truncated)
                    );
                }
            }
        }
    }

    #[test]
    fn too_large_is_refused_by_the_writer() {
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf);
        assert_eq!(
            w.put_varint(MAX_VARINT + 1),
            Err(super::super::WireError::ValueTooLarge)
        );
        assert_eq!(w.position(), 0);
    }
}
