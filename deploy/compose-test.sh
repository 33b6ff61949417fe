#!/usr/bin/env bash
# The docker-compose test: a coordinator and two CPU workers in containers on a private network
# run a small evaluation of two models (the simulator and the judge are local models on the
# cluster too); one worker container is stopped mid-run and the run must still complete, with
# every conversation and the re-placement in the coordinator's log.
#
#   bash deploy/compose-test.sh [path/to/ibench]      # default: target/debug/ibench
#
# Needs docker with docker-compose (1.29 or v2) and, for the base image, debootstrap (see
# deploy/base-image.sh); no registry. Leaves nothing behind (containers, network, image).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug/ibench}"
[ -x "$bin" ] || { echo "compose-test: no ibench binary at $bin (cargo build first)" >&2; exit 1; }
if docker compose version >/dev/null 2>&1; then dc=(docker compose); else dc=(docker-compose); fi

bash deploy/base-image.sh ibench-base:bookworm
work="$(mktemp -d)"
project="ibench-ci-$$"
image="ibench:compose-test-$$"
export COMPOSE_PROJECT_NAME="$project" IBENCH_IMAGE="$image" IBENCH_MODELS="$work/models" \
       IBENCH_RESULTS="$work/results" IBENCH_MIN_STAGES=2 IBENCH_LOG=info \
       IBENCH_CLUSTER_TOKEN="ci-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
       IBENCH_COORDINATOR_PORT=0
compose() { "${dc[@]}" -f deploy/docker-compose.yml "$@"; }
cleanup() {
    code=$?
    if [ "$code" != 0 ]; then
        echo "compose-test: failed; the coordinator's log:" >&2
        compose logs --no-color coordinator 2>&1 | tail -60 >&2 || true
        if [ -n "${IBENCH_KEEP:-}" ]; then
            compose logs --no-color > "$IBENCH_KEEP.compose.log" 2>&1 || true
            cp -r "$work" "$IBENCH_KEEP" || true
        fi
    fi
    compose --profile eval down -v --remove-orphans >/dev/null 2>&1 || true
    docker image rm -f "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$code"
}
trap cleanup EXIT

# The image: the host's binary on the debootstrapped base.
mkdir -p "$work/ctx" "$work/models" "$work/results"
cp "$bin" "$work/ctx/ibench"
docker build -q -f deploy/Dockerfile.prebuilt -t "$image" "$work/ctx" >/dev/null
# The models: the tiny fixtures, with a context long enough for real prompts.
for m in tiny-qwen3 tiny-llama; do
    cp -r "tests/fixtures/$m" "$work/models/$m"
    python3 - "$work/models/$m/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["max_position_embeddings"] = 8192
json.dump(c, open(p, "w"))
PY
done
chmod -R a+rX "$work/models"
chmod 777 "$work/results"

compose up -d --scale worker=2 coordinator worker
# Readiness: both workers registered (the coordinator logs each registration).
wait_log() { # pattern count timeout_s
    local deadline=$(( $(date +%s) + $3 ))
    until [ "$(compose logs --no-color coordinator 2>&1 | grep -c -- "$1")" -ge "$2" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "compose-test: timed out waiting for '$1' x$2" >&2; return 1; }
        sleep 0.5
    done
}
wait_log "worker registered" 2 120
echo "compose-test: coordinator and 2 workers up after ${SECONDS} s"

compose --profile eval run --rm -T compare compare \
    --models /models/tiny-qwen3 /models/tiny-llama \
    --simulator local:/models/tiny-qwen3 --judge local:/models/tiny-qwen3 \
    --limit 2 --max-turns 3 --max-new-tokens 24 --no-early-stop --bootstrap 100 \
    --out /home/ibench/runs/compose > "$work/compare.out" 2> "$work/compare.err" &
run=$!
# Mid-run: once both models are placed (over both workers), stop one worker container.
wait_log "model placed" 2 300
victim="$(docker ps --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=worker" --format '{{.Names}}' | sort | tail -1)"
kill -0 "$run" 2>/dev/null || { echo "compose-test: the run ended before a worker could be stopped" >&2; exit 1; }
echo "compose-test: stopping $victim mid-run (${SECONDS} s)"
docker stop "$victim" >/dev/null
stopped_at=$SECONDS
if ! wait "$run"; then
    echo "compose-test: compare failed:" >&2
    tail -40 "$work/compare.err" >&2
    exit 1
fi
compose logs --no-color coordinator 2>&1 | grep -q "stages lost; placing them again" \
    || { echo "compose-test: the coordinator never re-placed the lost stages" >&2; exit 1; }
echo "compose-test: the run completed $(( SECONDS - stopped_at )) s after the stop (${SECONDS} s in all)"

python3 - "$work/results/compose" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
rows = [json.loads(l) for l in (d / "transcripts.jsonl").read_text().splitlines() if l.strip()]
assert len(rows) == 4, f"expected 2 models x 2 scenarios, got {len(rows)}"
failed = [(r["model"], r["scenario"], r.get("error")) for r in rows if r["end"] == "failed"]
assert not failed, f"failed conversations: {failed}"
for r in rows:
    assert len([m for m in r["messages"] if m["role"] == "assistant"]) == 3, r["scenario"]
    assert r["verdict"] is not None, f"unjudged: {r['model']} {r['scenario']}"
assert (d / "report.md").is_file()
print(f"compose-test: {len(rows)} conversations complete and judged after losing a worker")
PY
