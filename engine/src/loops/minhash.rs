//! MinHash near-duplicate filtering, a faster alternative to ROUGE-L for very large pools.
//!
//! A text becomes the set of its word shingles (`shingle` consecutive words after `rouge_score`'s
//! tokenisation, hashed to 64 bits); 128 MinHash values summarise the set, and locality-sensitive
//! hashing over bands of those values finds the pooled texts likely to be similar, so a check
//! costs a few hash look-ups instead of a comparison with every pooled text. Candidates are then
//! scored by their exact Jaccard similarity, so a reported score is never an estimate.

use super::rouge::tokenize;
use std::collections::HashMap;

/// MinHash values per text.
pub const NUM_PERM: usize = 128;

/// FNV-1a: a hash that is the same on every platform and version, so runs stay reproducible.
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

/// SplitMix64's finaliser: a bijection on u64, so `mix(x ^ seed)` acts as a random permutation.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sorted, distinct hashes of a text's word shingles. A text shorter than `shingle` words is
/// one shingle of all its words; a text without words has none.
pub fn shingles(text: &str, shingle: usize) -> Vec<u64> {
    let words = tokenize(text);
    let n = shingle.max(1);
    let mut out: Vec<u64> = if words.is_empty() {
        vec![]
    } else if words.len() <= n {
        vec![hash_words(&words)]
    } else {
        words.windows(n).map(hash_words).collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

fn hash_words(words: &[String]) -> u64 {
    words
        .iter()
        .fold(FNV_OFFSET, |h, w| fnv1a(&[0x1F], fnv1a(w.as_bytes(), h)))
}

/// Exact Jaccard similarity |A ∩ B| / |A ∪ B| of two sorted, distinct sets (0 when both are empty).
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

/// The MinHash signature of a shingle set.
pub fn signature(set: &[u64]) -> [u64; NUM_PERM] {
    let mut sig = [u64::MAX; NUM_PERM];
    for &x in set {
        for (i, s) in sig.iter_mut().enumerate() {
            let h = mix(x ^ PERM_SEEDS[i]);
            if h < *s {
                *s = h;
            }
        }
    }
    sig
}

/// The fraction of equal signature values: an unbiased estimate of the Jaccard similarity.
pub fn estimate(a: &[u64; NUM_PERM], b: &[u64; NUM_PERM]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / NUM_PERM as f64
}

const PERM_SEEDS: [u64; NUM_PERM] = {
    let mut s = [0u64; NUM_PERM];
    let mut i = 0;
    let mut state = 0x5EED_u64;
    while i < NUM_PERM {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        s[i] = z ^ (z >> 31);
        i += 1;
    }
    s
};

/// LSH bands × rows (bands · rows = 128) for a Jaccard threshold: the most rows per band (fewest
/// false candidates) that still makes a pool text exactly at the threshold a candidate with
/// probability ≥ 0.99 (1 − (1 − t^rows)^bands), since a missed candidate is a missed duplicate.
pub fn bands_for(threshold: f64) -> (usize, usize) {
    for rows in [16usize, 8, 4, 2, 1] {
        let bands = NUM_PERM / rows;
        let p = 1.0 - (1.0 - threshold.powi(rows as i32)).powi(bands as i32);
        if p >= 0.99 {
            return (bands, rows);
        }
    }
    (NUM_PERM, 1)
}

/// A pool of texts indexed for near-duplicate look-ups.
pub struct MinHashPool {
    shingle: usize,
    bands: usize,
    rows: usize,
    /// Per band: band hash → pooled texts with that band.
    index: Vec<HashMap<u64, Vec<u32>>>,
    sets: Vec<Vec<u64>>,
}

impl MinHashPool {
    /// `threshold` chooses the LSH banding (see [`bands_for`]); `shingle` is the words per shingle.
    pub fn new(threshold: f64, shingle: usize) -> Self {
        let (bands, rows) = bands_for(threshold);
        MinHashPool {
            shingle: shingle.max(1),
            bands,
            rows,
            index: (0..bands).map(|_| HashMap::new()).collect(),
            sets: vec![],
        }
    }

    pub fn banding(&self) -> (usize, usize) {
        (self.bands, self.rows)
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    fn band_keys(&self, sig: &[u64; NUM_PERM]) -> Vec<u64> {
        sig.chunks(self.rows)
            .map(|band| {
                band.iter()
                    .fold(FNV_OFFSET, |h, v| fnv1a(&v.to_le_bytes(), h))
            })
            .collect()
    }

    pub fn add(&mut self, text: &str) {
        let set = shingles(text, self.shingle);
        let id = self.sets.len() as u32;
        // A text without words would share every band with every other empty text.
        if !set.is_empty() {
            let keys = self.band_keys(&signature(&set));
            for (band, key) in keys.into_iter().enumerate() {
                self.index[band].entry(key).or_default().push(id);
            }
        }
        self.sets.push(set);
    }

    /// Pooled texts sharing a band with `text`, with their exact Jaccard similarity, most similar
    /// first (ties by pool order).
    pub fn candidates(&self, text: &str) -> Vec<(usize, f64)> {
        let set = shingles(text, self.shingle);
        if set.is_empty() {
            return vec![];
        }
        let mut ids: Vec<u32> = self
            .band_keys(&signature(&set))
            .iter()
            .enumerate()
            .filter_map(|(band, key)| self.index[band].get(key))
            .flatten()
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out: Vec<(usize, f64)> = ids
            .into_iter()
            .map(|i| (i as usize, jaccard(&set, &self.sets[i as usize])))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The highest Jaccard similarity among the candidates (0 when there are none).
    pub fn max_score(&self, text: &str) -> f64 {
        self.candidates(text).first().map_or(0.0, |c| c.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_by_hand() {
        // {write, a, poem, about, the, sea} vs {write, a, poem, about, the, ocean}: 5 / 7.
        let a = shingles("Write a poem about the sea.", 1);
        let b = shingles("write a POEM about the ocean!", 1);
        assert_eq!((a.len(), b.len()), (6, 6));
        assert!((jaccard(&a, &b) - 5.0 / 7.0).abs() < 1e-12);
        // Bigrams: {write a, a poem, poem about, about the, the sea} vs {…, the ocean}: 4 / 6.
        let (a2, b2) = (
            shingles("Write a poem about the sea.", 2),
            shingles("write a poem about the ocean", 2),
        );
        assert!((jaccard(&a2, &b2) - 4.0 / 6.0).abs() < 1e-12);
        // Repeated words count once: {the, cat} vs {the, dog}: 1 / 3.
        assert!(
            (jaccard(&shingles("the the cat", 1), &shingles("the dog", 1)) - 1.0 / 3.0).abs()
                < 1e-12
        );
        assert_eq!(
            jaccard(&shingles("same words", 1), &shingles("Same, words", 1)),
            1.0
        );
        assert_eq!(jaccard(&shingles("", 1), &shingles("x", 1)), 0.0);
        assert_eq!(jaccard(&[], &[]), 0.0);
        assert_eq!(
            shingles("one two", 3).len(),
            1,
            "a short text is one shingle"
        );
    }

    #[test]
    fn signatures_estimate_jaccard() {
        // Two sets of 200 elements sharing 100: J = 100 / 300. With 128 permutations the
        // estimate's standard deviation is sqrt(J(1-J)/128) ≈ 0.042; allow 4 of them.
        let a: Vec<u64> = (0..200).collect();
        let b: Vec<u64> = (100..300).collect();
        let e = estimate(&signature(&a), &signature(&b));
        assert!((e - 1.0 / 3.0).abs() < 0.17, "estimate {e}");
        assert_eq!(estimate(&signature(&a), &signature(&a)), 1.0);
    }

    #[test]
    fn banding_follows_the_threshold() {
        assert_eq!(bands_for(0.7), (32, 4));
        assert_eq!(bands_for(0.5), (64, 2));
        assert_eq!(bands_for(0.9), (16, 8));
        for t in [0.3, 0.5, 0.7, 0.9] {
            let (b, r) = bands_for(t);
            assert_eq!(b * r, NUM_PERM);
            assert!(1.0 - (1.0 - f64::powi(t, r as i32)).powi(b as i32) >= 0.99);
        }
    }

    #[test]
    fn near_duplicates_are_caught_and_others_kept() {
        let mut pool = MinHashPool::new(0.7, 1);
        for t in [
            "Give three tips for staying healthy and fit during the winter months.",
            "Write a short poem about the sea at night.",
            "Classify the sentiment of the following movie review as positive or negative.",
        ] {
            pool.add(t);
        }
        // One word changed in twelve: J = 11 / 13 ≈ 0.85.
        let near = "Give three tips for staying healthy and fit during the summer months.";
        let c = pool.candidates(near);
        assert_eq!(c[0].0, 0);
        assert!((c[0].1 - 11.0 / 13.0).abs() < 1e-12, "{c:?}");
        assert!(pool.max_score(near) > 0.7);
        assert_eq!(
            pool.max_score("Write a short poem about the sea at night."),
            1.0
        );
        for unrelated in [
            "Explain how a rainbow forms after rain.",
            "Translate the sentence into French.",
            "List five cities in South America with their populations.",
        ] {
            assert!(pool.max_score(unrelated) <= 0.7, "{unrelated}");
        }
        assert_eq!(pool.max_score(""), 0.0);
    }
}
