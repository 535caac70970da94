//! 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime 0x100000001b3): the one stable hash of
//! the core. Its values are kept (parked decisions' fingerprints, neighbourhood terms, schedule
//! offsets), so it must give the same number in every run and build: std's `Hasher`s do not
//! promise that.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An FNV-1a hash fed a byte at a time.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(OFFSET_BASIS)
    }
}

impl Fnv1a {
    /// Feeds one byte.
    pub fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PRIME);
    }

    /// Feeds `bytes` in order.
    pub fn bytes(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.byte(b));
    }

    /// The hash of what was fed.
    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The FNV-1a hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::default();
    h.bytes(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fed_in_pieces_is_fed_at_once() {
        let mut h = Fnv1a::default();
        h.bytes(b"foo");
        h.byte(b'b');
        h.bytes(b"ar");
        assert_eq!(h.finish(), fnv1a64(b"foobar"));
    }
}
