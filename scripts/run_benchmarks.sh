#!/usr/bin/env bash
# Run the benchmarks: set up the provider's environment and the benchmark-only environment
# (.venv-bench: the official Modelbit client and matplotlib, pinned), then run every workload
# against one local Modelbit server. Prints the table; writes benchmarks/results/latest.json and
# benchmarks/results/latest.png.
#   bash scripts/run_benchmarks.sh                 full size (about 15 minutes on 2 cores)
#   bash scripts/run_benchmarks.sh --size tiny     everything at a tiny size (CI)
#   VENV         the provider's environment (default .venv; created by scripts/bootstrap.sh if absent)
#   BENCH_VENV   the benchmark-only environment (default .venv-bench)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
BENCH_VENV=${BENCH_VENV:-.venv-bench}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    VENV="$VENV" bash scripts/bootstrap.sh
fi
# The provider itself is never installed there: the official client is measured on its own terms.
BENCH_VENV="$BENCH_VENV" PYTHON="$PYTHON" bash scripts/official_client_env.sh

exec "$VENV/bin/python" -m benchmarks.run --bench-python "$BENCH_VENV/bin/python" "$@"
