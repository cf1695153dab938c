#!/usr/bin/env bash
# moe and llama.cpp on the same GGUF files, one after the other within each round so both see
# the same machine state: prefill 512 and batch-1 decode 64, 3 repeats each, then a table of the
# medians over rounds (benches/scripts/side_by_side.py).
#
#   LLAMA_BENCH=/path/to/llama-bench benches/scripts/side_by_side.sh OUT_DIR ROUNDS FILE.gguf...
#
# Env: MOE_BIN (default target/release/moe), THREADS (default 2).
set -euo pipefail
out=$1
rounds=$2
shift 2
moe=${MOE_BIN:-target/release/moe}
llama=${LLAMA_BENCH:?set LLAMA_BENCH to llama.cpp\'s llama-bench}
threads=${THREADS:-2}
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
    for f in "$@"; do
        n=$(basename "$f" .gguf)
        "$llama" -m "$f" -t "$threads" -p 512 -n 64 -r 3 -o json >"$out/llama-$n-$r.json"
        "$moe" --threads "$threads" bench --model "$f" --prefill 512 --decode 64 --batch 1 \
            --repeats 3 --json >"$out/moe-$n-$r.json"
    done
done
python3 "$(dirname "$0")/side_by_side.py" "$out"
