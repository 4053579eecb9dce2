#!/usr/bin/env bash
# Set up from nothing and run every check: lint, types, the test suite on the reference Airflow
# (3.3.x, real services and a real browser included), then the unit, operator, example-DAG,
# documentation and reliability tests on the floor Airflow (3.1).
# Exits non-zero on any failure, and when a pytest run collects no test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
# The official Modelbit client in its own environment, for the wire-compatibility test.
bash scripts/official_client_env.sh
bash scripts/install_browser.sh || echo "test: Chromium unavailable; browser tests will be skipped"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

mkdir -p artifacts
.venv/bin/python -m pytest -q -ra -p no:cacheprovider --junitxml=artifacts/pytest-3.3.xml "$@"

# The floor: every test except those of the Airflow services, the browser and the long-running
# examples and benchmarks, on Airflow 3.1.0.
VENV=.venv-floor CONSTRAINTS=constraints/airflow-3.1.txt bash scripts/bootstrap.sh
.venv-floor/bin/python -m pytest -q -ra -p no:cacheprovider -m "not services and not browser and not slow" \
    --junitxml=artifacts/pytest-3.1.xml "$@"

# The package as a release ships it: wheel and sdist built and checked with twine, the wheel alone
# installed into a clean environment with the pinned Airflow, the provider registered there.
bash scripts/check_package.sh
