#!/usr/bin/env bash
# Runs the loops' local models on two devices and compares what they wrote.
#
#   scripts/gpu_check_loops.sh MOE_BINARY MODELS_DIR EVAL_JSONL [WORK_DIR]
#
# MODELS_DIR holds moe-student-tiny and moe-teacher-tiny; EVAL_JSONL is the held-out tasks file
# (`{"task", "question", "answer"}` per line, e.g. shared/data/tasks/eval.jsonl). On each device
# it runs, with small sizes and greedy decoding:
#   moe loop distill --eval   teacher vs student on N_RECORDS records spread over the eval tasks
#   moe loop teach            greedy teacher and exam, one adaptive round
#   moe loop active           random, least_confidence, nll and gate (the router's entropy)
# then compares every JSON/JSONL file of each run: integers and strings (generated text, labels,
# token ids, counts) must be equal, floats (divergences, logprobs, accuracies, uncertainties) within
# |a - b| <= ATOL + RTOL * max(|a|, |b|); timings, and the run directories in paths, are skipped.
# The teacher's top-k alternatives in the distillation shards are compared as id -> logprob maps
# (alternatives tied within the tolerance may swap places). Accuracies are fractions of a few
# items, so within the tolerance means equal. Prints a PASS/FAIL table with the largest relative
# float difference per file; exits 1 when a check fails.
#
# Environment: DEVICE_A (default cuda), DEVICE_B (default cpu), RTOL (1e-3), ATOL (1e-4),
# N_RECORDS (48). `DEVICE_A=cpu` checks the script itself on a machine without a GPU.
# The tiny checkpoints are bf16: the CPU computes them in f32, CUDA's tensor-core kernels round
# activations to bf16 (tests/golden_forward.rs holds that path to 0.1 + 2e-2 x |logit| against
# transformers' bf16), so a failure by float tolerance alone is worth reading against the
# "max rel" column (and a rerun with, say, RTOL=2e-2) before calling it a bug.
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
MOE=$(realpath "$1")
MODELS=$(realpath "$2")
EVAL=$(realpath "$3")
WORK=${4:-$(mktemp -d -t moe-gpu-check-loops.XXXXXX)}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
DEVICE_A=${DEVICE_A:-cuda}
DEVICE_B=${DEVICE_B:-cpu}
RTOL=${RTOL:-1e-3}
ATOL=${ATOL:-1e-4}
N_RECORDS=${N_RECORDS:-48}
TEACHER=$MODELS/moe-teacher-tiny
STUDENT=$MODELS/moe-student-tiny

for p in "$MOE" "$TEACHER/config.json" "$STUDENT/config.json" "$EVAL"; do
    [[ -e $p ]] || { echo "missing: $p" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "python3 is needed for the comparison" >&2; exit 2; }

# N_RECORDS eval records, taken in turn from each task so every task is represented.
python3 - "$EVAL" "$N_RECORDS" "$WORK/records.jsonl" <<'EOF'
import json, sys
from collections import OrderedDict
src, n, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
by_task = OrderedDict()
for line in open(src):
    if line.strip():
        r = json.loads(line)
        by_task.setdefault(r.get("task"), []).append(line.strip())
picked, i = [], 0
while len(picked) < n and any(i < len(v) for v in by_task.values()):
    for v in by_task.values():
        if i < len(v) and len(picked) < n:
            picked.append(v[i])
    i += 1
open(dst, "w").write("\n".join(picked) + "\n")
EOF

models=(--teacher "$TEACHER" --student "$STUDENT")
# One run of the binary; a failure ends the check with the command line named.
moe() {
    "$MOE" "$@" || {
        local rc=$?
        echo "FAIL: moe $* exited $rc" >&2
        exit 1
    }
}
run_device() {
    local device=$1 dir=$2
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "== --device $device -> $dir"
    moe --device "$device" loop distill "${models[@]}" --eval \
        --data "$WORK/records.jsonl" --format jsonl --top-k 8 --out "$dir/distill" \
        >"$dir/distill.txt"
    moe --device "$device" loop teach "${models[@]}" --tasks "$EVAL" \
        --pool-size 40 --teach-problems 4 --rationales 2 --exam-problems 2 --repeats 1 \
        --temperature 0 --exam-temperature 0 --max-tokens 16 --rounds 1 --heldout-size 8 \
        --seed 7 --out "$dir/teach" >"$dir/teach.json"
    moe --device "$device" loop active "${models[@]}" --tasks "$EVAL" \
        --pool-size 24 --heldout-size 16 --strategies random,least_confidence,nll,gate \
        --rounds 2 --batch 4 --shots 2 --max-tokens 12 --seed 7 --out "$dir/active" \
        >"$dir/active.json"
}

run_device "$DEVICE_A" "$WORK/a"
run_device "$DEVICE_B" "$WORK/b"

python3 - "$WORK/a" "$WORK/b" "$DEVICE_A" "$DEVICE_B" "$RTOL" "$ATOL" <<'EOF'
import json, math, os, sys
a_dir, b_dir, dev_a, dev_b = sys.argv[1:5]
rtol, atol = float(sys.argv[5]), float(sys.argv[6])

def timing(key):
    return "second" in key or key.endswith("_per_s") or key.endswith("_unix")

def load(path):
    text = open(path).read()
    if path.endswith(".jsonl"):
        return [json.loads(l) for l in text.splitlines() if l.strip()]
    return json.loads(text)

class Diff:
    def __init__(self):
        self.values = self.floats = self.bad = 0
        self.worst = 0.0      # largest |a - b| / (ATOL + RTOL * max(|a|, |b|))
        self.worst_rel = 0.0  # largest |a - b| / max(|a|, |b|)
        self.first = None

    def fail(self, path, why):
        self.bad += 1
        if self.first is None:
            self.first = f"{path}: {why}"

    def cmp(self, x, y, path):
        if isinstance(x, dict) and isinstance(y, dict):
            keys = sorted(k for k in set(x) | set(y) if not timing(k))
            for k in keys:
                if k not in x or k not in y:
                    self.fail(f"{path}.{k}", "only on one device")
                else:
                    self.cmp(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                self.fail(path, f"lengths {len(x)} vs {len(y)}")
            for i, (u, v) in enumerate(zip(x, y)):
                self.cmp(u, v, f"{path}[{i}]")
        elif isinstance(x, float) or isinstance(y, float):
            self.values += 1
            self.floats += 1
            if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
                return self.fail(path, f"{x!r} vs {y!r}")
            if math.isnan(x) and math.isnan(y):
                return
            m = max(abs(x), abs(y))
            d = abs(x - y)
            self.worst = max(self.worst, d / (atol + rtol * m))
            if m > 0:
                self.worst_rel = max(self.worst_rel, d / m)
            if not d <= atol + rtol * m:
                self.fail(path, f"{x!r} vs {y!r}")
        else:
            self.values += 1
            if isinstance(x, str) and isinstance(y, str):
                x, y = x.replace(a_dir, "<run>"), y.replace(b_dir, "<run>")
            if x != y:
                self.fail(path, f"{x!r} vs {y!r}")

    def topk(self, x, y, path):
        # A distillation shard row: the teacher's top-k alternatives per position, compared as
        # id -> logprob maps (alternatives whose logprobs agree within the tolerance may swap
        # places, and one may drop off the k-th place for another of the same value); the ranks
        # of the actual tokens follow from these and from token_logprobs, so they are not compared.
        skip = ("token_ids", "top_values", "token_ranks")
        self.cmp({k: v for k, v in x.items() if k not in skip},
                 {k: v for k, v in y.items() if k not in skip}, path)
        ids_x, ids_y = x.get("token_ids", []), y.get("token_ids", [])
        vals_x, vals_y = x.get("top_values", []), y.get("top_values", [])
        if len(ids_x) != len(ids_y):
            return self.fail(path, f"positions {len(ids_x)} vs {len(ids_y)}")
        for t, (ix, iy, vx, vy) in enumerate(zip(ids_x, ids_y, vals_x, vals_y)):
            mx, my = dict(zip(ix, vx)), dict(zip(iy, vy))
            for i in sorted(set(mx) | set(my)):
                p = f"{path}.top[{t}][id {i}]"
                if i in mx and i in my:
                    self.cmp(float(mx[i]), float(my[i]), p)
                else:  # on one side only: it must tie with the other side's last alternative
                    mine, other = (mx, my) if i in mx else (my, mx)
                    self.cmp(float(mine[i]), float(min(other.values())), p + " (k-th place)")

rows, ok = [], True
for loop in ("distill", "teach", "active"):
    pa, pb = os.path.join(a_dir, loop), os.path.join(b_dir, loop)
    names = sorted({f for d in (pa, pb) for f in os.listdir(d) if f.endswith((".json", ".jsonl"))})
    for name in names:
        d = Diff()
        fa, fb = os.path.join(pa, name), os.path.join(pb, name)
        if not (os.path.exists(fa) and os.path.exists(fb)):
            d.fail(name, "written on one device only")
        else:
            x, y = load(fa), load(fb)
            if loop == "distill" and name.startswith("distill-") and name.endswith(".jsonl"):
                if len(x) != len(y):
                    d.fail(name, f"rows {len(x)} vs {len(y)}")
                for i, (u, v) in enumerate(zip(x, y)):
                    d.topk(u, v, f"{name}[{i}]")
            else:
                d.cmp(x, y, name)
        ok &= d.bad == 0
        rows.append((loop, name, d))

print(f"\n{dev_a} vs {dev_b}: integers and strings equal, floats within {atol:g} + {rtol:g} x |value|")
print(f"{'loop':<8} {'file':<24} {'values':>8} {'floats':>7} {'max rel':>9} {'of tol':>7} {'bad':>5}  result")
for loop, name, d in rows:
    print(f"{loop:<8} {name:<24} {d.values:>8} {d.floats:>7} {d.worst_rel:>9.2e} {d.worst:>7.3f} "
          f"{d.bad:>5}  {'PASS' if d.bad == 0 else 'FAIL'}")
for loop, name, d in rows:
    if d.bad:
        print(f"  {loop}/{d.first}")
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
