#!/usr/bin/env bash
# Throughput of one model on a local cluster, split into 1..S stages: a coordinator and one worker
# process per device in DEVICES, the smoke run of `ibench coordinator --json` (a warm-up run, then
# a timed run of BATCH copies of a prompt). Prints one JSON line per stage count; the texts of all
# lines must be equal (the same greedy tokens however the model is split).
#
#   scripts/cluster-bench.sh MODEL_DIR "cuda:0 cuda:1" [BATCH] [MAX_NEW_TOKENS] [IBENCH]
#   scripts/cluster-bench.sh tests/fixtures/tiny-qwen3 "cpu cpu cpu" 8 32
#
# Env: IBENCH_STAGES (stage counts to run, default 1..number of devices), IBENCH_MICRO_BATCHES
# (the coordinator's --micro-batches, default 0: one per stage), IBENCH_BENCH_PROMPT.
set -euo pipefail
model="$1"; read -r -a devices <<< "$2"; batch="${3:-8}"; tokens="${4:-32}"
bin="${5:-target/debug/ibench}"
export IBENCH_CLUSTER_TOKEN="bench-$$" IBENCH_LOG="${IBENCH_LOG:-warn}"
prompt="${IBENCH_BENCH_PROMPT:-Explain in detail how a doctor should ask a patient about insomnia.}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for stages in ${IBENCH_STAGES:-$(seq 1 "${#devices[@]}")}; do
    port="$(free_port)"
    "$bin" coordinator --listen "127.0.0.1:$port" --workers "${#devices[@]}" --model "$model" \
        --prompt "$prompt" \
        --batch "$batch" --max-new-tokens "$tokens" --min-stages "$stages" --reserve-gib 0 \
        --micro-batches "${IBENCH_MICRO_BATCHES:-0}" \
        --json --exit-after &
    coord=$!
    pids=("$coord")
    for i in "${!devices[@]}"; do
        "$bin" worker --coordinator "http://127.0.0.1:$port" --devices "${devices[$i]}" \
            --listen 127.0.0.1:0 --name "bench-w$i" &
        pids+=($!)
    done
    wait "$coord"
    kill "${pids[@]:1}" 2>/dev/null || true
    wait "${pids[@]:1}" 2>/dev/null || true
done
