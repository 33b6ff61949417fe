#!/usr/bin/env bash
# `ibench compare` on a local cluster and in one process, side by side: a coordinator
# (--min-stages 2) and one worker per device in DEVICES, the two tiny fixtures as models under test,
# tiny-qwen3 as local patient and judge. Prints how long each took and how many transcripts agree.
#
#   scripts/cluster-eval-demo.sh "cuda:0 cuda:0" cuda:0 OUT_DIR [IBENCH]
#   scripts/cluster-eval-demo.sh "cpu cpu" cpu /tmp/demo
set -euo pipefail
read -r -a devices <<< "$1"; device="$2"; out="$3"; bin="${4:-target/debug/ibench}"
mkdir -p "$out/models"
for m in tiny-qwen3 tiny-llama; do
    cp -r "tests/fixtures/$m" "$out/models/"
    python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['max_position_embeddings']=8192; json.dump(c,open(p,'w'))" "$out/models/$m/config.json"
done
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export IBENCH_CLUSTER_TOKEN="demo-$$" IBENCH_REGISTRY="$out/models.toml"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
IBENCH_LOG=info "$bin" coordinator --listen "127.0.0.1:$port" --min-stages 2 --reserve-gib 0 > "$out/coordinator.log" 2>&1 &
pids+=($!)
for i in "${!devices[@]}"; do
    IBENCH_LOG=warn "$bin" worker --coordinator "http://127.0.0.1:$port" --devices "${devices[$i]}" \
        --listen 127.0.0.1:0 --name "demo-w$i" > "$out/worker$i.log" 2>&1 &
    pids+=($!)
done
deadline=$(( SECONDS + 120 ))
until [ "$(grep -c 'worker registered' "$out/coordinator.log")" -ge "${#devices[@]}" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "workers did not register" >&2; exit 1; }
    sleep 0.5
done
m="$out/models"
args=(--models "$m/tiny-qwen3" "$m/tiny-llama" --simulator "local:$m/tiny-qwen3" --judge "local:$m/tiny-qwen3"
      --limit 2 --max-turns 3 --max-new-tokens 24 --no-early-stop --bootstrap 100)
s=$SECONDS
IBENCH_LOG=warn "$bin" compare "${args[@]}" --coordinator "http://127.0.0.1:$port" --out "$out/cluster" > "$out/cluster.out" 2> "$out/cluster.err"
echo "cluster: $(( SECONDS - s )) s"
s=$SECONDS
IBENCH_LOG=warn "$bin" compare "${args[@]}" --device "$device" --out "$out/one-process" > "$out/one-process.out" 2> "$out/one-process.err"
echo "one process: $(( SECONDS - s )) s"
python3 - "$out" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
def load(run):
    rows = [json.loads(l) for l in (d / run / "transcripts.jsonl").read_text().splitlines() if l.strip()]
    return {(r["model"], r["scenario"]): r for r in rows}
a, b = load("cluster"), load("one-process")
same = sum(1 for k in a if k in b and a[k]["messages"] == b[k]["messages"])
print(f"transcripts: {len(a)} on the cluster, {len(b)} in one process, {same} identical")
print("ends:", sorted(r["end"] for r in a.values()))
PY
