//! The writer's memory of recent bodies, for recognising a sender's retries.
//!
//! didlogic retries an event it got no `200` for, for about 16 minutes. A retry of an event that
//! *was* stored (the answer was lost) must be answered `200` and not stored twice. The writer
//! asks this table for the sequence numbers of earlier events whose body hash matches, then
//! compares kind, stamp and body byte for byte against the stored event: the table only ever
//! proposes candidates, so a false candidate costs one lookup and is never a false duplicate.
//!
//! Why in memory: an on-disk index keyed by a hash puts every new entry on a random page, and
//! each commit then writes (and fsyncs) one 4 KiB page per event for it. Profiles put that at
//! most of the writer's time. This table costs no disk writes; it is rebuilt at start-up from
//! the `digests` database (sequential, 8 to 12 bytes per event).
//!
//! Layout: two generations of an open-addressing table of `u64` slots. A slot holds the event's
//! sequence number (40 bits) and 24 more bits of its hash; `0` is empty (sequence numbers start
//! at 1). When the current generation is full, the older one is cleared and becomes current, so
//! the table remembers between one and two generations of the most recent events: memory stays
//! fixed, and nothing is ever deleted slot by slot.

/// Sequence numbers at or above this are not remembered (2^40: 35 years at 1,000 events/s).
const SEQ_LIMIT: u64 = 1 << 40;
const TAG_BITS: u32 = 24;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// A generation is full at 3/4 of its slots: linear probing stays short below that.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;

/// Recent body hashes to sequence numbers, in two generations of fixed size.
pub struct Recent {
    gens: [Generation; 2],
    /// Index of the generation that takes inserts.
    current: usize,
    per_generation: usize,
}

struct Generation {
    slots: Vec<u64>,
    len: usize,
    /// The smallest sequence number inserted since the last clear.
    first: Option<u64>,
}

impl Recent {
    /// A table that remembers at least `per_generation` events (and at most twice that).
    /// Memory: two tables of the next power of two at or above `4/3 * per_generation` slots,
    /// 8 bytes each.
    pub fn new(per_generation: usize) -> Recent {
        let per_generation = per_generation.max(1);
        let slots = (per_generation * LOAD_DEN)
            .div_ceil(LOAD_NUM)
            .next_power_of_two()
            .max(2);
        Recent {
            gens: [Generation::new(slots), Generation::new(slots)],
            current: 0,
            per_generation,
        }
    }

    /// Bytes the two generations take.
    pub fn memory_bytes(&self) -> usize {
        self.gens.iter().map(|g| g.slots.len() * 8).sum()
    }

    /// Events remembered now.
    pub fn len(&self) -> usize {
        self.gens[0].len + self.gens[1].len
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers that event `seq` has a body with hash `hash`.
    pub fn insert(&mut self, hash: u64, seq: u64) {
        if seq == 0 || seq >= SEQ_LIMIT {
            return;
        }
        if self.gens[self.current].len >= self.per_generation {
            self.current ^= 1;
            self.gens[self.current].clear();
        }
        self.gens[self.current].insert(hash, seq);
    }

    /// Sequence numbers of remembered events whose hash may be `hash`, newest generation first.
    pub fn candidates(&self, hash: u64) -> impl Iterator<Item = u64> + '_ {
        let newest = &self.gens[self.current];
        let older = &self.gens[self.current ^ 1];
        newest.candidates(hash).chain(older.candidates(hash))
    }

    /// The smallest sequence number remembered (what the table's memory reaches back to).
    pub fn oldest_seq(&self) -> Option<u64> {
        self.gens.iter().filter_map(|g| g.first).min()
    }
}

impl Generation {
    fn new(slots: usize) -> Generation {
        Generation {
            slots: vec![0; slots],
            len: 0,
            first: None,
        }
    }

    fn clear(&mut self) {
        self.slots.fill(0);
        self.len = 0;
        self.first = None;
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Where probing starts, and the tag kept in the slot: different bits of the hash.
    fn split(&self, hash: u64) -> (usize, u64) {
        ((hash as usize) & self.mask(), (hash >> 40) & TAG_MASK)
    }

    fn insert(&mut self, hash: u64, seq: u64) {
        let (mut at, tag) = self.split(hash);
        // The caller keeps `len` below the slot count, so an empty slot exists.
        while self.slots[at] != 0 {
            at = (at + 1) & self.mask();
        }
        self.slots[at] = (seq << TAG_BITS) | tag;
        self.len += 1;
        self.first = Some(self.first.map_or(seq, |f| f.min(seq)));
    }

    fn candidates(&self, hash: u64) -> impl Iterator<Item = u64> + '_ {
        let (start, tag) = self.split(hash);
        let mask = self.mask();
        (0..self.slots.len())
            .map(move |i| self.slots[(start + i) & mask])
            .take_while(|&s| s != 0)
            .filter(move |&s| s & TAG_MASK == tag)
            .map(|s| s >> TAG_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
    }

    #[test]
    fn finds_what_was_inserted_and_not_what_was_not() {
        let mut t = Recent::new(1000);
        for seq in 1..=1000 {
            t.insert(hash(seq), seq);
        }
        for seq in 1..=1000 {
            assert!(t.candidates(hash(seq)).any(|s| s == seq), "lost {seq}");
        }
        let false_candidates: usize = (5000..6000).map(|i| t.candidates(hash(i)).count()).sum();
        // 24 tag bits: a stray candidate is about one in a million probes.
        assert!(false_candidates <= 1, "{false_candidates} false candidates");
    }

    #[test]
    fn the_same_hash_keeps_every_sequence_number() {
        let mut t = Recent::new(100);
        t.insert(42, 7);
        t.insert(42, 9);
        let mut got: Vec<u64> = t.candidates(42).collect();
        got.sort_unstable();
        assert_eq!(got, vec![7, 9]);
    }

    #[test]
    fn remembers_between_one_and_two_generations() {
        let per = 500;
        let mut t = Recent::new(per);
        for seq in 1..=(per as u64 * 5 + 123) {
            t.insert(hash(seq), seq);
            assert!(t.len() <= 2 * per);
        }
        let last = per as u64 * 5 + 123;
        // The newest `per` events are always there; events three generations old are not.
        for seq in (last - per as u64 + 1)..=last {
            assert!(t.candidates(hash(seq)).any(|s| s == seq));
        }
        for seq in 1..=per as u64 {
            assert!(!t.candidates(hash(seq)).any(|s| s == seq));
        }
        assert!(t.oldest_seq().is_some_and(|o| o <= last - per as u64 + 1));
    }

    #[test]
    fn memory_is_fixed_by_the_size() {
        let t = Recent::new(393_216);
        assert_eq!(t.memory_bytes(), 2 * 524_288 * 8);
        assert!(t.is_empty());
    }

    #[test]
    fn unrepresentable_sequence_numbers_are_not_remembered() {
        let mut t = Recent::new(10);
        t.insert(1, 0);
        t.insert(1, SEQ_LIMIT);
        assert!(t.is_empty());
    }
}
