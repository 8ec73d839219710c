//! The underlay: datagrams between nodes' public IPs, run through a chain of fault rules.
//!
//! As in turmoil, each packet meets the rules of its link in order and the first rule
//! that does not [`Verdict::Pass`] decides: drop it, or deliver it after a delay. Rules
//! that only alter the packet (corrupt a byte, send a second copy) note it and pass.
//! Every link (a directed pair of public IPs) draws from its own random stream, so a
//! fault on one link never shifts the draws of another.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use rand::{Rng, RngCore};
use rand_chacha::rand_core::block::BlockRngCore;
use rand_chacha::ChaCha8Core;

use crate::hash::KeyMap;
use crate::rng;

/// Why the underlay dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropCause {
    /// A partition separates the two ends (in this direction).
    Partition,
    /// Larger than the link's MTU.
    Mtu,
    /// Random loss.
    Loss,
}

impl DropCause {
    /// The word used in traces and event files.
    pub fn as_str(self) -> &'static str {
        match self {
            DropCause::Partition => "partition",
            DropCause::Mtu => "mtu",
            DropCause::Loss => "loss",
        }
    }

    /// The cause named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [DropCause::Partition, DropCause::Mtu, DropCause::Loss]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// What happens to one datagram: the decision the event file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Dropped.
    Drop(DropCause),
    /// Delivered after `delay`; a second copy after `duplicate`; one byte XORed.
    Deliver {
        /// One-way delay of the (first) copy.
        delay: Duration,
        /// Delay of a duplicate copy, if one is sent.
        duplicate: Option<Duration>,
        /// `(byte index, xor mask)` of a corrupted byte.
        corrupt: Option<(u32, u8)>,
    },
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Drop(c) => write!(f, "drop {}", c.as_str()),
            Fate::Deliver {
                delay,
                duplicate,
                corrupt,
            } => {
                write!(f, "deliver {}us", delay.as_micros())?;
                if let Some(d) = duplicate {
                    write!(f, " dup {}us", d.as_micros())?;
                }
                if let Some((i, m)) = corrupt {
                    write!(f, " corrupt {i}^{m}")?;
                }
                Ok(())
            }
        }
    }
}

impl Fate {
    /// Parses what [`Fate`]'s `Display` wrote.
    pub fn parse(text: &str) -> Option<Fate> {
        let mut words = text.split_whitespace();
        match words.next()? {
            "drop" => DropCause::parse(words.next()?).map(Fate::Drop),
            "deliver" => {
                let us = |w: &str| {
                    w.strip_suffix("us")?
                        .parse()
                        .ok()
                        .map(Duration::from_micros)
                };
                let delay = us(words.next()?)?;
                let (mut duplicate, mut corrupt) = (None, None);
                while let Some(w) = words.next() {
                    match w {
                        "dup" => duplicate = Some(us(words.next()?)?),
                        "corrupt" => {
                            let (i, m) = words.next()?.split_once('^')?;
                            corrupt = Some((i.parse().ok()?, m.parse().ok()?));
                        }
                        _ => return None,
                    }
                }
                Some(Fate::Deliver {
                    delay,
                    duplicate,
                    corrupt,
                })
            }
            _ => None,
        }
    }
}

/// The faults of one directed link. Probabilities are in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkFaults {
    /// Base one-way delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]`.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by up to `reorder_delay`, so that later
    /// ones overtake it.
    pub reorder: f64,
    /// How long a reordered datagram may be held back.
    pub reorder_delay: Duration,
    /// Probability that one byte of the datagram is flipped.
    pub corrupt: f64,
    /// Largest IP packet the link carries: inner packet + 28 bytes of IP and UDP.
    pub mtu: usize,
}

impl Default for LinkFaults {
    fn default() -> Self {
        LinkFaults {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            corrupt: 0.0,
            mtu: 1500,
        }
    }
}

/// What a rule sees of a datagram.
#[derive(Debug, Clone, Copy)]
pub struct PacketInfo {
    /// Sender's public IP.
    pub from: Ipv4Addr,
    /// Receiver's public IP.
    pub to: Ipv4Addr,
    /// UDP payload length (the inner IP packet).
    pub len: usize,
}

/// A rule's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No opinion; the next rule decides.
    Pass,
    /// Deliver after this delay.
    Deliver(Duration),
    /// Drop it.
    Drop(DropCause),
}

/// Side effects noted by rules that pass.
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    duplicate: Option<Duration>,
    corrupt: Option<(u32, u8)>,
}

/// One fault rule. The chain of a link is [`LinkFaults::rules`] behind the partition
/// rule; it is data, so a link's faults can be swapped at any step.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    Mtu(usize),
    Loss(f64),
    Corrupt(f64),
    Duplicate(f64, Duration, Duration),
    Latency {
        base: Duration,
        jitter: Duration,
        reorder: f64,
        reorder_delay: Duration,
    },
}

fn uniform(rng: &mut impl Rng, max: Duration) -> Duration {
    let max = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    if max == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(rng.random_range(0..=max))
}

impl Rule {
    fn on_packet(&self, p: &PacketInfo, rng: &mut impl Rng, marks: &mut Marks) -> Verdict {
        match *self {
            Rule::Mtu(mtu) if p.len + 28 > mtu => Verdict::Drop(DropCause::Mtu),
            Rule::Mtu(_) => Verdict::Pass,
            Rule::Loss(p) if p > 0.0 && rng.random_bool(p.min(1.0)) => {
                Verdict::Drop(DropCause::Loss)
            }
            Rule::Loss(_) => Verdict::Pass,
            Rule::Corrupt(prob) => {
                if prob > 0.0 && p.len > 0 && rng.random_bool(prob.min(1.0)) {
                    let index = rng.random_range(0..p.len) as u32;
                    let mask = 1u8 << rng.random_range(0..8);
                    marks.corrupt = Some((index, mask));
                }
                Verdict::Pass
            }
            Rule::Duplicate(prob, base, jitter) => {
                if prob > 0.0 && rng.random_bool(prob.min(1.0)) {
                    marks.duplicate = Some(base + uniform(rng, jitter + base));
                }
                Verdict::Pass
            }
            Rule::Latency {
                base,
                jitter,
                reorder,
                reorder_delay,
            } => {
                let mut delay = base + uniform(rng, jitter);
                if reorder > 0.0 && rng.random_bool(reorder.min(1.0)) {
                    delay += uniform(rng, reorder_delay);
                }
                Verdict::Deliver(delay)
            }
        }
    }
}

impl LinkFaults {
    fn rules(&self) -> Vec<Rule> {
        vec![
            Rule::Mtu(self.mtu),
            Rule::Loss(self.loss),
            Rule::Corrupt(self.corrupt),
            Rule::Duplicate(self.duplicate, self.latency, self.jitter),
            Rule::Latency {
                base: self.latency,
                jitter: self.jitter,
                reorder: self.reorder,
                reorder_delay: self.reorder_delay,
            },
        ]
    }
}

/// Where a link's random stream is: its slot in [`Underlay::links`] and the next word
/// of its block to draw. The word sits here, beside the key the lookup has just read,
/// rather than in the block: a datagram then reads one cache line of its link's block
/// where a `ChaCha8Rng` (whose position lies past its 256 bytes of words) costs two
/// dependent misses -- a busy underlay has a link per pair of nodes, far more than fits
/// in cache.
#[derive(Debug, Clone, Copy)]
struct LinkAt {
    slot: u32,
    word: u32,
}

type LinkIndex = KeyMap<u64, LinkAt>;

/// A link's ChaCha8 generator and its current block of words: the state of a
/// [`rand_chacha::ChaCha8Rng`] without its position, which [`LinkAt`] keeps.
#[derive(Debug)]
struct LinkBlock {
    words: <ChaCha8Core as BlockRngCore>::Results,
    core: ChaCha8Core,
}

impl LinkBlock {
    /// The stream [`rng::stream`] gives for `(seed, "link", index)`, positioned (by
    /// [`LinkStream::WORDS`]) before its first block, as a new `ChaCha8Rng` is.
    fn new(seed: u64, index: u64) -> Self {
        use rand::SeedableRng;
        LinkBlock {
            words: Default::default(),
            core: ChaCha8Core::seed_from_u64(rng::derive(seed, "link", index)),
        }
    }
}

/// A link's random stream while a datagram draws from it: draws exactly the words, in
/// exactly the order, that `ChaCha8Rng` (rand_core's `BlockRng`) would, so that the
/// fates of a run do not depend on how the streams are stored.
struct LinkStream<'a> {
    block: &'a mut LinkBlock,
    word: &'a mut u32,
}

impl LinkStream<'_> {
    const WORDS: u32 = 64;

    fn refill(&mut self, word: u32) {
        self.block.core.generate(&mut self.block.words);
        *self.word = word;
    }

    fn at(&self, i: u32) -> u32 {
        self.block.words.as_ref()[i as usize]
    }
}

impl RngCore for LinkStream<'_> {
    fn next_u32(&mut self) -> u32 {
        if *self.word >= Self::WORDS {
            self.refill(0);
        }
        let value = self.at(*self.word);
        *self.word += 1;
        value
    }

    fn next_u64(&mut self) -> u64 {
        let i = *self.word;
        if i < Self::WORDS - 1 {
            *self.word += 2;
            (u64::from(self.at(i + 1)) << 32) | u64::from(self.at(i))
        } else if i >= Self::WORDS {
            self.refill(2);
            (u64::from(self.at(1)) << 32) | u64::from(self.at(0))
        } else {
            // The last word of this block is the low half, the first of the next the high.
            let low = u64::from(self.at(i));
            self.refill(1);
            (u64::from(self.at(0)) << 32) | low
        }
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // BlockRng spends a whole word on each four bytes, and on a last partial chunk.
        for chunk in dest.chunks_mut(4) {
            let bytes = self.next_u32().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

fn link_key(from: Ipv4Addr, to: Ipv4Addr) -> u64 {
    (u64::from(u32::from(from)) << 32) | u64::from(u32::from(to))
}

/// Every link's faults and random stream, and the partitions.
#[derive(Debug)]
pub struct Underlay {
    seed: u64,
    default: LinkFaults,
    /// The rules of `default`, which every link without an override follows.
    default_rules: Vec<Rule>,
    overrides: BTreeMap<(Ipv4Addr, Ipv4Addr), LinkFaults>,
    /// Looked up for every datagram and never walked in an order that matters (a
    /// change of faults reaches every link alike), so a hash map: a busy underlay has
    /// a link per pair of nodes. It maps to a slot of `links`, so that the map stays
    /// small enough to sit in cache while the links' random streams do not.
    index: LinkIndex,
    links: Vec<LinkBlock>,
    /// The rules of the links (by slot) whose faults were set apart from the others';
    /// every other link follows `default_rules`. Kept apart from the random streams, so
    /// that a datagram on an ordinary link reads no more than its stream.
    own_rules: KeyMap<u32, Vec<Rule>>,
    /// Directed pairs that cannot talk.
    blocked: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
}

impl Underlay {
    /// An underlay whose links all have `default` faults, drawing from `seed`.
    pub fn new(seed: u64, default: LinkFaults) -> Self {
        Underlay {
            seed,
            default_rules: default.rules(),
            default,
            overrides: BTreeMap::new(),
            index: LinkIndex::default(),
            links: Vec::new(),
            own_rules: KeyMap::default(),
            blocked: BTreeSet::new(),
        }
    }

    /// The faults of the link `from -> to`.
    pub fn faults(&self, from: Ipv4Addr, to: Ipv4Addr) -> &LinkFaults {
        self.overrides.get(&(from, to)).unwrap_or(&self.default)
    }

    /// Sets the faults of every link (`None`) or of `from -> to`, keeping the link's
    /// random stream where it is.
    pub fn set_faults(&mut self, link: Option<(Ipv4Addr, Ipv4Addr)>, faults: LinkFaults) {
        match link {
            None => {
                self.default_rules = faults.rules();
                self.default = faults;
                self.overrides.clear();
                self.own_rules.clear();
            }
            Some(pair) => {
                if let Some(at) = self.index.get(&link_key(pair.0, pair.1)) {
                    self.own_rules.insert(at.slot, faults.rules());
                }
                self.overrides.insert(pair, faults);
            }
        }
    }

    /// Blocks `from -> to`.
    pub fn block(&mut self, from: Ipv4Addr, to: Ipv4Addr) {
        self.blocked.insert((from, to));
    }

    /// Unblocks `from -> to`, or everything.
    pub fn heal(&mut self, link: Option<(Ipv4Addr, Ipv4Addr)>) {
        match link {
            Some(pair) => {
                self.blocked.remove(&pair);
            }
            None => self.blocked.clear(),
        }
    }

    /// Runs a datagram through its link's rule chain.
    pub fn decide(&mut self, p: &PacketInfo) -> Fate {
        if !self.blocked.is_empty() && self.blocked.contains(&(p.from, p.to)) {
            return Fate::Drop(DropCause::Partition);
        }
        let index = link_key(p.from, p.to);
        let at = match self.index.entry(index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let slot = self.links.len() as u32;
                self.links.push(LinkBlock::new(self.seed, index));
                if let Some(faults) = self.overrides.get(&(p.from, p.to)) {
                    self.own_rules.insert(slot, faults.rules());
                }
                e.insert(LinkAt {
                    slot,
                    word: LinkStream::WORDS,
                })
            }
        };
        let slot = at.slot;
        let rng = &mut LinkStream {
            block: &mut self.links[slot as usize],
            word: &mut at.word,
        };
        let rules = if self.own_rules.is_empty() {
            &self.default_rules
        } else {
            self.own_rules.get(&slot).unwrap_or(&self.default_rules)
        };
        let mut marks = Marks::default();
        for rule in rules {
            match rule.on_packet(p, rng, &mut marks) {
                Verdict::Pass => {}
                Verdict::Drop(cause) => return Fate::Drop(cause),
                Verdict::Deliver(delay) => {
                    return Fate::Deliver {
                        delay,
                        duplicate: marks.duplicate,
                        corrupt: marks.corrupt,
                    }
                }
            }
        }
        Fate::Deliver {
            delay: Duration::ZERO,
            duplicate: marks.duplicate,
            corrupt: marks.corrupt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link's stream draws what `rng::stream` does, whatever mix of draws a rule
    /// chain makes, across many block boundaries (odd positions included).
    #[test]
    fn link_stream_draws_what_chacha8rng_draws() {
        let mut reference = rng::stream(5, "link", 42);
        let mut block = LinkBlock::new(5, 42);
        let mut word = LinkStream::WORDS;
        let mut pick = rng::stream(6, "pick", 0);
        for _ in 0..20_000 {
            let mut ours = LinkStream {
                block: &mut block,
                word: &mut word,
            };
            match pick.random_range(0..6) {
                0 => assert_eq!(ours.next_u32(), reference.next_u32()),
                1 => assert_eq!(ours.next_u64(), reference.next_u64()),
                2 => assert_eq!(
                    ours.random_range(0..=200u64),
                    reference.random_range(0..=200u64)
                ),
                3 => assert_eq!(ours.random_bool(0.3), reference.random_bool(0.3)),
                4 => assert_eq!(ours.random_range(0..8), reference.random_range(0..8)),
                _ => {
                    let n = pick.random_range(0..11);
                    let (mut a, mut b) = ([0u8; 10], [0u8; 10]);
                    ours.fill_bytes(&mut a[..n]);
                    reference.fill_bytes(&mut b[..n]);
                    assert_eq!(a, b);
                }
            }
        }
    }

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, i)
    }

    #[test]
    fn one_way_partition_blocks_one_direction_only() {
        let mut u = Underlay::new(1, LinkFaults::default());
        u.block(ip(1), ip(2));
        let p = |from, to| PacketInfo { from, to, len: 100 };
        assert_eq!(u.decide(&p(ip(1), ip(2))), Fate::Drop(DropCause::Partition));
        assert!(matches!(u.decide(&p(ip(2), ip(1))), Fate::Deliver { .. }));
        u.heal(None);
        assert!(matches!(u.decide(&p(ip(1), ip(2))), Fate::Deliver { .. }));
    }

    #[test]
    fn loss_rate_is_roughly_what_was_asked_and_fates_round_trip() {
        let faults = LinkFaults {
            loss: 0.2,
            duplicate: 0.1,
            corrupt: 0.1,
            jitter: Duration::from_millis(3),
            ..LinkFaults::default()
        };
        let mut u = Underlay::new(9, faults);
        let p = PacketInfo {
            from: ip(1),
            to: ip(2),
            len: 1400,
        };
        let fates: Vec<Fate> = (0..10_000).map(|_| u.decide(&p)).collect();
        let lost = fates.iter().filter(|f| matches!(f, Fate::Drop(_))).count();
        assert!((1700..2300).contains(&lost), "{lost}");
        for f in &fates {
            assert_eq!(Fate::parse(&f.to_string()), Some(*f));
        }
        let big = PacketInfo { len: 1473, ..p };
        assert_eq!(u.decide(&big), Fate::Drop(DropCause::Mtu));
    }
}
