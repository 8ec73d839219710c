//! etcd lease IDs that carry their own expiry.
//!
//! A store [`Entry`](weft_core::store::Entry) says when it expires, but an etcd key only
//! names its lease; asking etcd (`LeaseTimeToLive`) costs a round trip per lease, which a
//! node listing a thousand peers cannot afford. etcd lets the client choose a lease's ID,
//! so weft chooses one that records the expiry:
//!
//! ```text
//!  62      51 50                     19 18          0
//! +----------+-------------------------+------------+
//! | check 12 | expiry, s since 2020 32 | random 19  |   (bit 63, the sign, is 0)
//! +----------+-------------------------+------------+
//! ```
//!
//! Every weft process decodes the same expiry from the same key, with no round trip; the
//! check bits (a hash of the rest) tell weft's IDs from those etcd generates for flannel
//! and others, whose expiry is asked for once and cached. The expiry is rounded down to
//! the second and counted from before the grant was sent, so it is never later than
//! etcd's (etcd may only extend a lease, e.g. after a leader change or a restart).
//! The random bits keep nodes that grant in the same second apart; a collision is an
//! error from etcd, and the grant is retried with other bits.

use weft_core::Timestamp;

/// 2020-01-01T00:00:00Z: expiries are counted from here, in seconds, in 32 bits.
const EPOCH_S: u64 = 1_577_836_800;
const RANDOM_BITS: u32 = 19;
const EXPIRY_BITS: u32 = 32;
const BODY_BITS: u32 = RANDOM_BITS + EXPIRY_BITS;
const CHECK_BITS: u32 = 12;

fn check(body: u64) -> u64 {
    // splitmix64's finalizer: every body bit moves every check bit.
    let mut z = body ^ 0x5745_4654_0000_0001; // "WEFT"
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) & ((1 << CHECK_BITS) - 1)
}

/// The ID of a lease expiring at `expires_at` (rounded down to the second), made unique
/// by `random`. `None` for an expiry before 2020 or after 2156.
pub(crate) fn encode(expires_at: Timestamp, random: u32) -> Option<i64> {
    let secs = (expires_at.as_millis() / 1000).checked_sub(EPOCH_S)?;
    if secs >= 1 << EXPIRY_BITS {
        return None;
    }
    let body = (secs << RANDOM_BITS) | u64::from(random & ((1 << RANDOM_BITS) - 1));
    let id = (check(body) << BODY_BITS) | body;
    i64::try_from(id).ok()
}

/// The expiry recorded in a weft lease ID; `None` for any other ID.
pub(crate) fn decode(id: i64) -> Option<Timestamp> {
    let id = u64::try_from(id).ok().filter(|id| *id != 0)?;
    let body = id & ((1 << BODY_BITS) - 1);
    if id >> BODY_BITS != check(body) {
        return None;
    }
    let secs = EPOCH_S + (body >> RANDOM_BITS);
    Some(Timestamp::from_millis(secs * 1000))
}

/// The expiry of a weft lease if `id` is one and a plausible one: between a day before
/// `now` and ten years after (which an ID etcd generated passes by chance about once in
/// fifty thousand).
pub(crate) fn decode_plausible(id: i64, now: Timestamp) -> Option<Timestamp> {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let at = decode(id)?;
    let earliest = Timestamp::from_millis(now.as_millis().saturating_sub(DAY_MS));
    let latest = Timestamp::from_millis(now.as_millis().saturating_add(3653 * DAY_MS));
    (earliest..=latest).contains(&at).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_750_000_000_123);

    #[test]
    fn expiry_round_trips_rounded_down_to_the_second() {
        for random in [0, 1, 0x7_FFFF, u32::MAX] {
            let id = encode(NOW, random).expect("encodable");
            assert!(id > 0);
            assert_eq!(decode(id), Some(Timestamp::from_millis(1_750_000_000_000)));
            assert_eq!(decode_plausible(id, NOW), decode(id));
        }
        assert_ne!(encode(NOW, 1), encode(NOW, 2));
        assert_eq!(encode(Timestamp::from_millis(1_000), 0), None);
    }

    #[test]
    fn ids_etcd_generates_are_not_taken_for_weft_ones() {
        // etcd's generator: 16 bits of member ID, then a timestamp and a counter.
        let mut fooled = 0;
        let mut plausible = 0;
        for member in 0..64u64 {
            for counter in 0..1_000u64 {
                let id = (((member * 0x9e37 + 0x2a) << 48) | ((1_700_000_000 << 8) + counter))
                    & (i64::MAX as u64);
                let id = i64::try_from(id).expect("63 bits");
                fooled += usize::from(decode(id).is_some());
                plausible += usize::from(decode_plausible(id, NOW).is_some());
            }
        }
        // 64,000 IDs: about 16 pass the check alone, almost none the plausibility too.
        assert!(fooled < 64, "{fooled} of 64000 foreign IDs decoded");
        assert!(plausible <= 2, "{plausible} of 64000 foreign IDs plausible");
        assert_eq!(decode(0), None);
        assert_eq!(decode(-5), None);
    }
}
