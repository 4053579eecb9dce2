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
BENCH_REQUIREMENTS=benchmarks/requirements-official-client.txt

if [ ! -x "$VENV/bin/python" ]; then
    VENV="$VENV" bash scripts/bootstrap.sh
fi
if [ ! -x "$BENCH_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$BENCH_VENV"
fi
UV=$(command -v uv || true)
if [ -z "$UV" ]; then
    if [ ! -x "$BENCH_VENV/bin/uv" ]; then
        "$BENCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
    fi
    UV="$BENCH_VENV/bin/uv"
fi
"$UV" pip install --quiet -p "$BENCH_VENV/bin/python" -r "$BENCH_REQUIREMENTS"
# The provider itself is never installed there: the official client is measured on its own terms.
"$BENCH_VENV/bin/python" -c 'import modelbit, matplotlib, pyarrow'

exec "$VENV/bin/python" -m benchmarks.run --bench-python "$BENCH_VENV/bin/python" "$@"
