//! The near-duplicate filter of the generating loops: ROUGE-L against every pooled text (the
//! anchors' filter) or MinHash with LSH (sub-linear in the pool, for very large pools).

use super::minhash::MinHashPool;
use super::rouge::RougePool;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which similarity, and the score above which a candidate is a near-duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Dedup {
    /// ROUGE-L F-measure against every pooled text.
    Rouge { threshold: f64 },
    /// Exact Jaccard similarity of word shingles, against the LSH candidates only.
    MinHash { threshold: f64, shingle: usize },
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::Rouge { threshold: 0.7 }
    }
}

impl Dedup {
    /// From command-line words: `rouge` or `minhash`, a threshold in (0, 1], words per shingle.
    pub fn parse(method: &str, threshold: f64, shingle: usize) -> Result<Self> {
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(Error::InvalidRequest(format!(
                "the near-duplicate threshold must be in (0, 1], not {threshold}"
            )));
        }
        match method {
            "rouge" => Ok(Dedup::Rouge { threshold }),
            "minhash" if shingle >= 1 => Ok(Dedup::MinHash { threshold, shingle }),
            "minhash" => Err(Error::InvalidRequest(
                "a shingle needs at least 1 word".into(),
            )),
            other => Err(Error::InvalidRequest(format!(
                "unknown near-duplicate filter `{other}`: use `rouge` or `minhash`"
            ))),
        }
    }

    pub fn threshold(&self) -> f64 {
        match *self {
            Dedup::Rouge { threshold } | Dedup::MinHash { threshold, .. } => threshold,
        }
    }
}

/// A candidate's similarity to the pool.
#[derive(Clone, Debug)]
pub struct Similarity {
    pub max: f64,
    /// Up to 10 most similar pooled texts (pool index, score), most similar first.
    pub top: Vec<(usize, f64)>,
    /// Mean score over the whole pool (ROUGE-L only: MinHash never scores the whole pool).
    pub mean: Option<f64>,
}

pub enum NearDupPool {
    Rouge(RougePool, f64),
    MinHash(MinHashPool, f64),
}

impl NearDupPool {
    pub fn new(d: &Dedup) -> Self {
        match *d {
            Dedup::Rouge { threshold } => NearDupPool::Rouge(RougePool::new(), threshold),
            Dedup::MinHash { threshold, shingle } => {
                NearDupPool::MinHash(MinHashPool::new(threshold, shingle), threshold)
            }
        }
    }

    pub fn add(&mut self, text: &str) {
        match self {
            NearDupPool::Rouge(p, _) => p.add(text),
            NearDupPool::MinHash(p, _) => p.add(text),
        }
    }

    pub fn similarity(&self, text: &str) -> Similarity {
        match self {
            NearDupPool::Rouge(p, _) => {
                let scores = p.scores(text);
                let max = scores.iter().cloned().fold(0.0, f64::max);
                let mut order: Vec<usize> = (0..scores.len()).collect();
                order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                Similarity {
                    max,
                    top: order.iter().take(10).map(|&i| (i, scores[i])).collect(),
                    mean: Some(scores.iter().sum::<f64>() / scores.len().max(1) as f64),
                }
            }
            NearDupPool::MinHash(p, _) => {
                let mut c = p.candidates(text);
                c.truncate(10);
                Similarity {
                    max: c.first().map_or(0.0, |x| x.1),
                    top: c,
                    mean: None,
                }
            }
        }
    }

    /// Strictly above the threshold, as the anchors compare.
    pub fn is_duplicate(&self, s: &Similarity) -> bool {
        let t = match self {
            NearDupPool::Rouge(_, t) | NearDupPool::MinHash(_, t) => *t,
        };
        s.max > t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_filters() {
        assert_eq!(
            Dedup::parse("minhash", 0.6, 2).unwrap(),
            Dedup::MinHash {
                threshold: 0.6,
                shingle: 2
            }
        );
        for (m, t, s, want) in [
            ("jaccard", 0.7, 1, "unknown near-duplicate filter `jaccard`"),
            ("rouge", 1.5, 1, "must be in (0, 1]"),
            ("minhash", 0.7, 0, "at least 1 word"),
        ] {
            let e = Dedup::parse(m, t, s).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        for d in [Dedup::default(), Dedup::parse("minhash", 0.7, 1).unwrap()] {
            let mut p = NearDupPool::new(&d);
            p.add("Write a short poem about the sea at night.");
            p.add("Explain how a rainbow forms after rain.");
            let s = p.similarity("Write a short poem about the sea at noon.");
            assert!(p.is_duplicate(&s), "{d:?}: {s:?}");
            assert_eq!(s.top[0].0, 0);
            let s = p.similarity("List five rivers in Europe.");
            assert!(!p.is_duplicate(&s), "{d:?}: {s:?}");
        }
    }
}
