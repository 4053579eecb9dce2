#!/usr/bin/env bash
# Create or update the official Modelbit client's own environment (default .venv-bench): modelbit
# 0.44.3 and the chart tools, fully pinned in benchmarks/requirements-official-client.txt. The
# provider is never installed there. Used by the benchmarks and by the wire-compatibility test.
#   BENCH_VENV   where (default .venv-bench)
#   UV           the uv to install with (default: uv on PATH, else .venv/bin/uv, else one put in BENCH_VENV)
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_VENV=${BENCH_VENV:-.venv-bench}
PYTHON=${PYTHON:-python3}
BENCH_REQUIREMENTS=benchmarks/requirements-official-client.txt

if [ ! -x "$BENCH_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$BENCH_VENV"
fi
UV=${UV:-$(command -v uv || true)}
if [ -z "$UV" ] && [ -x .venv/bin/uv ]; then
    UV=.venv/bin/uv
fi
if [ -z "$UV" ]; then
    if [ ! -x "$BENCH_VENV/bin/uv" ]; then
        "$BENCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
    fi
    UV="$BENCH_VENV/bin/uv"
fi
"$UV" pip install --quiet -p "$BENCH_VENV/bin/python" -r "$BENCH_REQUIREMENTS"
"$BENCH_VENV/bin/python" -c 'import modelbit, matplotlib, pyarrow'
