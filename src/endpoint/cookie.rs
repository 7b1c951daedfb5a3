//! Stateless address validation: SipHash-2-4 and the cookies a server hands out in RETRY.
//!
//! A cookie is 13 bytes:
//!
//! ```text
//! u8   generation   low 8 bits of the number of the secret it was made under
//! u32  issued       whole seconds since the endpoint was created, when it was made
//! u64  tag          SipHash-2-4(secret, generation || issued || client_cid || address)
//! ```
//!
//! where `address` is `4 || ipv4 (4 bytes) || port` or `6 || ipv6 (16 bytes) || port`. The
//! server keeps nothing per cookie: it recomputes the tag when the cookie comes back and checks
//! that the cookie is at most `cookie_lifetime` old (rounded to whole seconds) and made under
//! the current secret or, for one rotation period after a rotation, the previous one.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Length of a cookie.
pub(crate) const COOKIE_LEN: usize = 13;

/// SipHash-2-4 of `msg` under the 128-bit `key` (key bytes 0..8 and 8..16 are `k0` and `k1`,
/// little-endian), as specified by Aumasson and Bernstein.
pub(crate) fn siphash24(key: &[u8; 16], msg: &[u8]) -> u64 {
    let (k0, k1) = key.split_at(8);
    let k0 = le64(k0);
    let k1 = le64(k1);
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut blocks = msg.chunks_exact(8);
    for block in &mut blocks {
        let m = le64(block);
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    // The last block: the remaining bytes, then the message length (mod 256) in the top byte.
    let tail = blocks.remainder();
    let mut last = (msg.len() as u64) << 56;
    for (i, &b) in tail.iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    v[3] ^= last;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// Little-endian value of up to 8 bytes.
fn le64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .enumerate()
        .fold(0, |acc, (i, &b)| acc | u64::from(b) << (8 * i))
}

/// Why a cookie did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieError {
    /// Not [`COOKIE_LEN`] bytes.
    Length,
    /// Made under a secret that is no longer (or never was) valid.
    UnknownSecret,
    /// Older than the cookie lifetime, or from the future.
    Expired,
    /// The tag does not match: another address or connection id, or forged.
    BadTag,
}

/// The secrets cookies are made under, and their rotation.
///
/// The application supplies secrets ([`rotate`](Self::rotate)); if it does not rotate within a
/// period, the jar derives the next secret from the current one with SipHash (a one-way
/// ratchet), so time alone retires old secrets.
pub(crate) struct CookieJar {
    current: [u8; 16],
    previous: [u8; 16],
    /// Number of the current secret (the first is 0).
    generation: u64,
    /// The previous secret is accepted until this instant.
    previous_until: Instant,
    /// When the jar ratchets by itself, unless the application rotated first.
    next_rotation: Instant,
    period: Duration,
    lifetime_secs: u64,
    epoch: Instant,
}

impl fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secrets.
        f.debug_struct("CookieJar")
            .field("generation", &self.generation)
            .field("next_rotation", &self.next_rotation)
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// A jar with `secret` as its first secret; cookies live `lifetime` (rounded up to whole
    /// seconds) and secrets rotate every `period`.
    pub(crate) fn new(
        secret: [u8; 16],
        now: Instant,
        lifetime: Duration,
        period: Duration,
    ) -> Self {
        let lifetime_secs = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
        CookieJar {
            current: secret,
            previous: secret,
            generation: 0,
            previous_until: now,
            next_rotation: now.checked_add(period).unwrap_or(now),
            period,
            lifetime_secs,
            epoch: now,
        }
    }

    /// Makes `secret` the current secret; the current one stays valid for one more period.
    pub(crate) fn rotate(&mut self, now: Instant, secret: [u8; 16]) {
        self.ratchet_to(secret);
        self.previous_until = now.checked_add(self.period).unwrap_or(now);
        self.next_rotation = self.previous_until;
    }

    /// A key derived from the first secret, for uses other than cookies (connection ids).
    pub(crate) fn derive_key(&self, label: u8) -> [u8; 16] {
        derive(&self.current, label, self.generation)
    }

    /// The cookie for a client at `addr` with connection id `cid`, made now.
    pub(crate) fn issue(&mut self, now: Instant, addr: SocketAddr, cid: u64) -> [u8; COOKIE_LEN] {
        self.maybe_ratchet(now);
        let generation = self.generation as u8;
        let issued = u32::try_from(self.secs(now)).unwrap_or(u32::MAX);
        let tag = tag(&self.current, generation, issued, cid, addr);
        let mut cookie = [0u8; COOKIE_LEN];
        cookie[0] = generation;
        cookie[1..5].copy_from_slice(&issued.to_be_bytes());
        cookie[5..].copy_from_slice(&tag.to_be_bytes());
        cookie
    }

    /// Checks a cookie presented by a client at `addr` with connection id `cid`.
    pub(crate) fn verify(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        cid: u64,
        cookie: &[u8],
    ) -> Result<(), CookieError> {
        self.maybe_ratchet(now);
        let cookie: &[u8; COOKIE_LEN] = cookie.try_into().map_err(|_| CookieError::Length)?;
        let [generation, i0, i1, i2, i3, t @ ..] = *cookie;
        let issued = u32::from_be_bytes([i0, i1, i2, i3]);
        let key = if generation == self.generation as u8 {
            &self.current
        } else if generation == self.generation.wrapping_sub(1) as u8
            && self.generation > 0
            && now < self.previous_until
        {
            &self.previous
        } else {
            return Err(CookieError::UnknownSecret);
        };
        let age = self.secs(now).checked_sub(u64::from(issued));
        if age.is_none_or(|age| age > self.lifetime_secs) {
            return Err(CookieError::Expired);
        }
        // Compare without an early exit.
        if tag(key, generation, issued, cid, addr) ^ u64::from_be_bytes(t) != 0 {
            return Err(CookieError::BadTag);
        }
        Ok(())
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Ratchets if the application did not rotate in time: once if one period passed, twice
    /// (so that the previous secret is dead too) if two or more passed.
    fn maybe_ratchet(&mut self, now: Instant) {
        if now < self.next_rotation {
            return;
        }
        let scheduled = self.next_rotation;
        let next = derive(&self.current, 0xff, self.generation);
        self.ratchet_to(next);
        self.previous_until = scheduled.checked_add(self.period).unwrap_or(scheduled);
        if now >= self.previous_until {
            let next = derive(&self.current, 0xff, self.generation);
            self.ratchet_to(next);
            self.previous_until = now;
        }
        self.next_rotation = now.checked_add(self.period).unwrap_or(now);
        if self.previous_until > now {
            self.next_rotation = self.previous_until;
        }
    }

    fn ratchet_to(&mut self, secret: [u8; 16]) {
        self.previous = self.current;
        self.current = secret;
        self.generation = self.generation.wrapping_add(1);
    }
}

/// A 128-bit key derived from `secret`, a label and a counter.
fn derive(secret: &[u8; 16], label: u8, counter: u64) -> [u8; 16] {
    let mut msg = [0u8; 10];
    msg[0] = label;
    msg[2..].copy_from_slice(&counter.to_be_bytes());
    let lo = siphash24(secret, &msg);
    msg[1] = 1;
    let hi = siphash24(secret, &msg);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_le_bytes());
    out[8..].copy_from_slice(&hi.to_le_bytes());
    out
}

/// The cookie tag: SipHash-2-4 over generation, issue time, client id and address.
fn tag(key: &[u8; 16], generation: u8, issued: u32, cid: u64, addr: SocketAddr) -> u64 {
    let mut msg = [0u8; 1 + 4 + 8 + 1 + 16 + 2];
    msg[0] = generation;
    msg[1..5].copy_from_slice(&issued.to_be_bytes());
    msg[5..13].copy_from_slice(&cid.to_be_bytes());
    let len = match addr.ip() {
        IpAddr::V4(ip) => {
            msg[13] = 4;
            msg[14..18].copy_from_slice(&ip.octets());
            18
        }
        IpAddr::V6(ip) => {
            msg[13] = 6;
            msg[14..30].copy_from_slice(&ip.octets());
            30
        }
    };
    msg[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
    siphash24(key, &msg[..len + 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vectors of the SipHash paper (Aumasson and Bernstein, appendix A, and
    /// `vectors.h` of the reference implementation): key `00 01 .. 0f`, message `00 01 .. n-1`,
    /// output bytes little-endian. Lengths 0..=15 cover every tail length and a full block.
    const VECTORS: [[u8; 8]; 16] = [
        [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72],
        [0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74],
        [0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d],
        [0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85],
        [0xb7, 0x87, 0x71, 0x27, 0xe0, 0x94, 0x27, 0xcf],
        [0x8d, 0xa6, 0x99, 0xcd, 0x64, 0x55, 0x76, 0x18],
        [0xce, 0xe3, 0xfe, 0x58, 0x6e, 0x46, 0xc9, 0xcb],
        [0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab],
        [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93],
        [0xb0, 0xe4, 0xa9, 0x0b, 0xdf, 0x82, 0x00, 0x9e],
        [0xf3, 0xb9, 0xdd, 0x94, 0xc5, 0xbb, 0x5d, 0x7a],
        [0xa7, 0xad, 0x6b, 0x22, 0x46, 0x2f, 0xb3, 0xf4],
        [0xfb, 0xe5, 0x0e, 0x86, 0xbc, 0x8f, 0x1e, 0x75],
        [0x90, 0x3d, 0x84, 0xc0, 0x27, 0x56, 0xea, 0x14],
        [0xee, 0xf2, 0x7a, 0x8e, 0x90, 0xca, 0x23, 0xf7],
        [0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1],
    ];

    fn key() -> [u8; 16] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn siphash_reference_vectors() {
        let msg: Vec<u8> = (0..16).collect();
        for (n, want) in VECTORS.iter().enumerate() {
            assert_eq!(
                siphash24(&key(), &msg[..n]).to_le_bytes(),
                *want,
                "length {n}"
            );
        }
        // The paper's worked example: 15 bytes, 0xa129ca6149be45e5.
        assert_eq!(siphash24(&key(), &msg[..15]), 0xa129_ca61_49be_45e5);
    }

    #[test]
    #[allow(deprecated)]
    fn siphash_agrees_with_std_on_longer_inputs() {
        use std::hash::Hasher;
        let msg: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for n in [16, 17, 31, 63, 64, 65, 255, 256, 300] {
            let mut h =
                std::hash::SipHasher::new_with_keys(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
            h.write(&msg[..n]);
            assert_eq!(siphash24(&key(), &msg[..n]), h.finish(), "length {n}");
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    const S: Duration = Duration::from_secs(1);

    fn jar(now: Instant) -> CookieJar {
        CookieJar::new([7; 16], now, 10 * S, 60 * S)
    }

    #[test]
    fn a_cookie_verifies_only_for_its_address_and_id() {
        let now = t0();
        let mut j = jar(now);
        let a = addr("127.0.0.1:4000");
        let c = j.issue(now, a, 42);
        assert_eq!(j.verify(now + 3 * S, a, 42, &c), Ok(()));
        assert_eq!(
            j.verify(now, addr("127.0.0.1:4001"), 42, &c),
            Err(CookieError::BadTag)
        );
        assert_eq!(
            j.verify(now, addr("127.0.0.2:4000"), 42, &c),
            Err(CookieError::BadTag)
        );
        assert_eq!(
            j.verify(now, addr("[::1]:4000"), 42, &c),
            Err(CookieError::BadTag)
        );
        assert_eq!(j.verify(now, a, 43, &c), Err(CookieError::BadTag));
        assert_eq!(j.verify(now, a, 42, &c[..12]), Err(CookieError::Length));
        let mut forged = c;
        forged[12] ^= 1;
        assert_eq!(j.verify(now, a, 42, &forged), Err(CookieError::BadTag));
        let mut backdated = c;
        backdated[4] ^= 1;
        assert_eq!(j.verify(now, a, 42, &backdated), Err(CookieError::Expired));
    }

    #[test]
    fn cookies_expire() {
        let now = t0();
        let mut j = jar(now);
        let a = addr("[2001:db8::1]:9");
        let c = j.issue(now, a, 1);
        assert_eq!(j.verify(now + 10 * S, a, 1, &c), Ok(()));
        assert_eq!(j.verify(now + 11 * S, a, 1, &c), Err(CookieError::Expired));
    }

    #[test]
    fn the_previous_secret_lives_one_period() {
        let now = t0();
        let mut j = CookieJar::new([1; 16], now, 1000 * S, 60 * S);
        let a = addr("10.0.0.1:1");
        let old = j.issue(now, a, 5);
        j.rotate(now + S, [2; 16]);
        assert_eq!(j.verify(now + 2 * S, a, 5, &old), Ok(()));
        let newer = j.issue(now + 2 * S, a, 5);
        assert_ne!(newer[0], old[0]);
        j.rotate(now + 3 * S, [3; 16]);
        assert_eq!(
            j.verify(now + 4 * S, a, 5, &old),
            Err(CookieError::UnknownSecret)
        );
        assert_eq!(j.verify(now + 4 * S, a, 5, &newer), Ok(()));
        // One period after the last rotation the jar ratchets by itself; the secret before
        // it stays valid one period more, then dies.
        assert_eq!(
            j.verify(now + 70 * S, a, 5, &newer),
            Err(CookieError::UnknownSecret)
        );
        let c = j.issue(now + 70 * S, a, 5);
        assert_eq!(j.verify(now + 100 * S, a, 5, &c), Ok(()));
        // Far in the future (several periods without use): everything old is dead.
        assert_eq!(
            j.verify(now + 500 * S, a, 5, &c),
            Err(CookieError::UnknownSecret)
        );
    }

    #[test]
    fn derived_keys_differ_from_the_secret_and_each_other() {
        let j = jar(t0());
        assert_ne!(j.derive_key(1), j.derive_key(2));
        assert_ne!(j.derive_key(1), [7; 16]);
    }
}
