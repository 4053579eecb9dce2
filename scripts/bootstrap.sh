#!/usr/bin/env bash
# Create a virtual environment and install the provider with every dependency pinned.
#   VENV         where to create it (default .venv)
#   CONSTRAINTS  the pinned set (default constraints/airflow-3.3.txt; the floor is constraints/airflow-3.1.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CONSTRAINTS=${CONSTRAINTS:-constraints/airflow-3.3.txt}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ]; then
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip --upgrade >/dev/null
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi
"$VENV/bin/uv" pip install --quiet -p "$VENV/bin/python" -c "$CONSTRAINTS" -e ".[test,emulator]"
version=$("$VENV/bin/python" -c 'import airflow; print(airflow.__version__)')
echo "bootstrap: $VENV ready with Airflow $version"
