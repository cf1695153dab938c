"""Writes tests/fixtures/rouge/pairs.json: synthetic text pairs and their ROUGE-L F-measure computed by the
`rouge_score` package (RougeScorer(["rougeL"], use_stemmer=False)), as self-instruct uses it."""

import json
import os
import random

from rouge_score import rouge_scorer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

extra = [
    "Café naïve résumé — CAFÉ!", "KELVIN \u212a sign", "İstanbul", "tabs\tand\nnewlines", "", "   ", "123 456 abc",
    "Don't stop; won't stop.", "日本語 text", "x", "The the THE the.",
]
rng = random.Random(0)
WORDS = "write a short poem about the sea give three tips for staying healthy classify sentiment of this review " \
    "Explain WHY sky is blue, list 5 fruits; translate to French: 'hello' sort numbers 3 1 2 déjà-vu e-mail U.S.A.".split()
texts = extra[:]
for _ in range(150):
    texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14))) + rng.choice(["", ".", "?", "!"]))
pairs = []
scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
for _ in range(400):
    a, b = rng.choice(texts), rng.choice(texts)
    if rng.random() < 0.3:
        words = a.split()
        rng.shuffle(words)
        b = " ".join(words[: max(1, len(words) - 2)])
    pairs.append({"target": a, "prediction": b, "rougeL": scorer.score(a, b)["rougeL"].fmeasure})
out = os.path.join(ROOT, "tests", "fixtures", "rouge")
os.makedirs(out, exist_ok=True)
json.dump(pairs, open(os.path.join(out, "pairs.json"), "w"), ensure_ascii=False, indent=0)
print(len(pairs), "pairs")
