//! A fast hash for the simulator's lookups keyed by addresses (a link, a host by its
//! public IP): the keys are the scenario's own, not an attacker's, and SipHash costs
//! more than the rest of a datagram's handling. Only for maps that are looked up and
//! never iterated where the order could reach a trace.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplicative (Fibonacci) hashing of integer keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // hashbrown takes its control bits from the top of the hash and its bucket from
        // the bottom: fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(K);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }
}

/// A hash map keyed by small integers or addresses.
pub type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_keys_spread_over_buckets_and_control_bits() {
        let hash = |n: u64| {
            let mut h = KeyHasher::default();
            h.write_u64(n);
            h.finish()
        };
        let low: std::collections::BTreeSet<u64> = (0..256).map(|n| hash(n) & 0xff).collect();
        let high: std::collections::BTreeSet<u64> = (0..256).map(|n| hash(n) >> 57).collect();
        assert!(low.len() > 128, "{}", low.len());
        assert!(high.len() > 64, "{}", high.len());
    }
}
