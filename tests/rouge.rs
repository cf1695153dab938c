//! ROUGE-L parity with the `rouge_score` package: the reference scores are computed by the
//! package at test time (scripts/test pip-installs `rouge-score`), on the text pairs of
//! `tests/fixtures/rouge/pairs.json`; only where the package is not installed and not required
//! do the scores stored in that file (written by `tests/python/make_rouge_fixture.py`) stand in.
//! The pool must agree with pairwise scores.

use moe::loops::rouge::{rouge_l, RougePool};
use moe_tests::fixture;
use moe_tests::python::{python, python_has};

/// `rouge_score`'s ROUGE-L F-measure of each (target, prediction), computed now.
fn rouge_score_now(pairs: &[(String, String)]) -> Vec<f64> {
    let dir = std::env::temp_dir().join(format!("moe-rouge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("pairs.json");
    std::fs::write(&input, serde_json::to_string(pairs).unwrap()).unwrap();
    let script = r#"
import json, sys
from rouge_score import rouge_scorer
s = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
pairs = json.load(open(sys.argv[1], encoding="utf-8"))
print(json.dumps([s.score(t, p)["rougeL"].fmeasure for t, p in pairs]))
"#;
    let o = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&input)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn rouge_l_equals_rouge_score() {
    let stored: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("rouge/pairs.json")).unwrap())
            .unwrap();
    assert!(stored.len() >= 400);
    let pairs: Vec<(String, String)> = stored
        .iter()
        .map(|p| {
            (
                p["target"].as_str().unwrap().to_string(),
                p["prediction"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<f64> = if python_has("rouge_score") {
        rouge_score_now(&pairs)
    } else {
        stored
            .iter()
            .map(|p| p["rougeL"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(want.len(), pairs.len());
    // Both sides compute the same f64 expression from the same integer LCS and lengths.
    for ((t, q), w) in pairs.iter().zip(&want) {
        let got = rouge_l(t, q);
        assert!((got - w).abs() < 1e-12, "{t:?} vs {q:?}: {got} != {w}");
    }
    assert!(
        want.iter().filter(|&&w| w > 0.0 && w < 1.0).count() > 100,
        "the pairs must exercise partial overlaps"
    );
    let mut pool = RougePool::new();
    for (t, _) in &pairs[..100] {
        pool.add(t);
    }
    let q = &pairs[7].1;
    let scores = pool.scores(q);
    for (s, (t, _)) in scores.iter().zip(&pairs[..100]) {
        assert_eq!(*s, rouge_l(t, q));
    }
    assert_eq!(
        pool.max_score(q),
        scores.iter().cloned().fold(0.0, f64::max)
    );
}
