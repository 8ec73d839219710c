//! Random streams: one seeded ChaCha per purpose, all derived from the run's seed.
//!
//! Deriving rather than sharing one generator keeps the streams independent: adding a
//! node does not shift the loss pattern of an existing link, and a packet more on one
//! link does not change another link's draws.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The stream for `purpose` (e.g. `"link"`, `"node"`) and `index` under `seed`.
pub fn stream(seed: u64, purpose: &str, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, purpose, index))
}

/// A 64-bit seed for `purpose` and `index` under `seed`: FNV-1a over the purpose, then
/// SplitMix64 finalisation, so that neighbouring indices give unrelated seeds.
pub fn derive(seed: u64, purpose: &str, index: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in purpose.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix(splitmix(seed ^ h) ^ index)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_purpose_index_and_seed() {
        let a = derive(1, "link", 0);
        assert_eq!(a, derive(1, "link", 0));
        assert_ne!(a, derive(1, "link", 1));
        assert_ne!(a, derive(1, "node", 0));
        assert_ne!(a, derive(2, "link", 0));
    }
}
