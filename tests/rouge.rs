//! ROUGE-L parity with the `rouge_score` package on pairs it scored
//! (`tests/python/make_rouge_fixture.py`), and the pool agreeing with pairwise scores.

use moe::loops::rouge::{rouge_l, RougePool};
use moe_tests::fixture;

#[test]
fn rouge_l_equals_rouge_score() {
    let pairs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("rouge/pairs.json")).unwrap())
            .unwrap();
    assert!(pairs.len() >= 400);
    for p in &pairs {
        let (t, q) = (
            p["target"].as_str().unwrap(),
            p["prediction"].as_str().unwrap(),
        );
        let want = p["rougeL"].as_f64().unwrap();
        let got = rouge_l(t, q);
        assert!(
            (got - want).abs() < 1e-12,
            "{t:?} vs {q:?}: {got} != {want}"
        );
    }
    let mut pool = RougePool::new();
    for p in &pairs[..100] {
        pool.add(p["target"].as_str().unwrap());
    }
    let q = pairs[7]["prediction"].as_str().unwrap();
    let scores = pool.scores(q);
    for (s, p) in scores.iter().zip(&pairs[..100]) {
        assert_eq!(*s, rouge_l(p["target"].as_str().unwrap(), q));
    }
    assert_eq!(
        pool.max_score(q),
        scores.iter().cloned().fold(0.0, f64::max)
    );
}
