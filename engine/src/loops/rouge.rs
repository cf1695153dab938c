//! ROUGE-L as the `rouge_score` package computes it (`RougeScorer(["rougeL"], use_stemmer=False)`):
//! lowercase, every run of characters outside `[a-z0-9]` becomes a space, split on whitespace,
//! then the F-measure of the longest common subsequence. Texts are tokenised once into ids so a
//! new text can be checked against a large pool in parallel.

use rayon::prelude::*;
use std::collections::HashMap;

/// `rouge_score`'s default tokenisation.
pub fn tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut tokens = vec![];
    let mut cur = String::new();
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            cur.push(c);
        } else if !cur.is_empty() {
            tokens.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    tokens
}

/// Length of the longest common subsequence, O(|a|·|b|) time, O(|b|) memory.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut prev = vec![0u32; b.len() + 1];
    let mut cur = vec![0u32; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()] as usize
}

/// ROUGE-L F-measure of `prediction` against `target` token sequences.
pub fn f_measure<T: PartialEq>(target: &[T], prediction: &[T]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(target, prediction) as f64;
    let precision = lcs / prediction.len() as f64;
    let recall = lcs / target.len() as f64;
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// ROUGE-L F-measure of two texts.
pub fn rouge_l(target: &str, prediction: &str) -> f64 {
    f_measure(&tokenize(target), &tokenize(prediction))
}

/// A pool of texts, tokenised once into integer ids, that new texts are compared against.
#[derive(Default)]
pub struct RougePool {
    vocab: HashMap<String, u32>,
    texts: Vec<Vec<u32>>,
}

impl RougePool {
    pub fn new() -> Self {
        Self::default()
    }

    fn ids(&mut self, text: &str) -> Vec<u32> {
        tokenize(text)
            .into_iter()
            .map(|t| {
                let n = self.vocab.len() as u32;
                *self.vocab.entry(t).or_insert(n)
            })
            .collect()
    }

    /// Ids of a text without growing the vocabulary (unknown words match nothing in the pool).
    fn probe(&self, text: &str) -> Vec<u32> {
        tokenize(text)
            .iter()
            .map(|t| self.vocab.get(t).copied().unwrap_or(u32::MAX))
            .collect()
    }

    pub fn add(&mut self, text: &str) {
        let ids = self.ids(text);
        self.texts.push(ids);
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// ROUGE-L of `text` (as the prediction) against every pooled text (as the target), in
    /// parallel.
    pub fn scores(&self, text: &str) -> Vec<f64> {
        let p = self.probe(text);
        self.texts.par_iter().map(|t| f_measure(t, &p)).collect()
    }

    /// The highest score against the pool (0 for an empty pool).
    pub fn max_score(&self, text: &str) -> f64 {
        let p = self.probe(text);
        self.texts
            .par_iter()
            .map(|t| f_measure(t, &p))
            .reduce(|| 0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenisation_and_scores_by_hand() {
        assert_eq!(
            tokenize("Hello, World! It's 3.14"),
            ["hello", "world", "it", "s", "3", "14"]
        );
        assert_eq!(tokenize("Café naïve"), ["caf", "na", "ve"]);
        assert!(
            (rouge_l("The cat sat on the mat", "the cat is on a mat") - 2.0 / 3.0).abs() < 1e-12
        );
        assert_eq!(rouge_l("", "x"), 0.0);
        let mut pool = RougePool::new();
        pool.add("Write a poem about the sea.");
        pool.add("Give three tips for staying healthy.");
        assert_eq!(pool.max_score("Write a poem about the sea."), 1.0);
        assert!(pool.max_score("unrelated words here") < 0.01);
    }
}
