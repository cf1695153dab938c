#!/usr/bin/env python3
"""The table of benches/scripts/side_by_side.sh's outputs: per file, medians over rounds of
prefill-512 and decode tokens/s for both engines, their ratios per round, moe's peak RSS and its
decode fraction of the bandwidth floor it probed."""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1])
rows = defaultdict(lambda: defaultdict(list))
for f in sorted(out.glob("*.json")):
    engine, rest = f.stem.split("-", 1)
    name, rnd = rest.rsplit("-", 1)
    d = json.loads(f.read_text())
    if engine == "llama":
        for t in d:
            key = "prefill" if t["n_prompt"] else "decode"
            rows[name][f"llama_{key}"].append((int(rnd), t["avg_ts"]))
    else:
        rows[name]["moe_prefill"].append((int(rnd), d["prefill"][0]["tokens_per_s"]))
        rows[name]["moe_decode"].append((int(rnd), d["decode"][0]["tokens_per_s"]))
        rows[name]["moe_floor"].append((int(rnd), d["decode"][0]["fraction_of_floor"]))
        rows[name]["moe_rss"].append((int(rnd), d["peak_rss_bytes"] / 2**20))


def med(v):
    return statistics.median(x for _, x in v)


def ratios(a, b):
    m = dict(b)
    return [x / m[r] for r, x in a if r in m]


print("| file | llama.cpp prefill 512 | moe prefill 512 | ratio (rounds) | llama.cpp decode | "
      "moe decode | ratio (rounds) | moe decode ÷ floor | moe peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for name, r in sorted(rows.items()):
    pr = ratios(r["moe_prefill"], r["llama_prefill"])
    dr = ratios(r["moe_decode"], r["llama_decode"])
    print(f"| {name} | {med(r['llama_prefill']):.1f} | {med(r['moe_prefill']):.1f} | "
          f"×{statistics.median(pr):.2f} ({', '.join(f'{x:.2f}' for x in pr)}) | "
          f"{med(r['llama_decode']):.1f} | {med(r['moe_decode']):.1f} | "
          f"×{statistics.median(dr):.2f} ({', '.join(f'{x:.2f}' for x in dr)}) | "
          f"{med(r['moe_floor']):.2f} | {med(r['moe_rss']):.0f} |")
