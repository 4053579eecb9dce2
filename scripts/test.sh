#!/usr/bin/env bash
# Set up from nothing and run every check: lint, types, the test suite on the reference Airflow
# (3.3.x, real services and a real browser included), then, side by side, the tests that run
# Airflow on the floor (3.1) and the middle release (3.2), one after the other, and the production
# shape (the example DAGs and the fault tests on PostgreSQL, Celery and S3), and the package as a
# release ships it.
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

# The other supported releases and the production shape, in two lanes that share nothing (own
# environments, Airflow homes, ports and folders), one per core: the floor, then 3.2; beside them,
# the production shape. The floor runs every test except those of the Airflow services, the
# browser, the long-running examples and benchmarks and the documentation's samples (they check the
# text against the reference release's commands); 3.2 runs the tests that run Airflow; the
# production shape runs the example DAGs, then the fault tests, on PostgreSQL, Celery with Redis
# and S3. Each run's output is printed when both lanes have ended.
VENV=.venv-floor CONSTRAINTS=constraints/airflow-3.1.txt bash scripts/bootstrap.sh
VENV=.venv-3.2 CONSTRAINTS=constraints/airflow-3.2.txt bash scripts/bootstrap.sh
# The production shape's stores and providers join .venv only now, after the reference suite ran
# without them (the provider must not need them).
bash scripts/bootstrap_production.sh
OTHER_RELEASES=(-q -ra -p no:cacheprovider -m "not services and not browser and not slow")
FLOOR_TESTS=(--ignore=tests/docs)
AIRFLOW_TESTS=(tests/operators tests/decorators tests/triggers tests/hooks tests/dags tests/reliability
    tests/plugins tests/test_get_provider_info.py tests/test_exceptions.py)
RUNS=(3.1 3.2 production)

# run NAME COMMAND...: the command's output in artifacts/pytest-NAME.log, its exit status in .status.
run() {
    local name=$1 status=0
    shift
    "$@" >"artifacts/pytest-$name.log" 2>&1 || status=$?
    echo "$status" >"artifacts/pytest-$name.status"
}
production_shape() {
    bash scripts/run_examples.sh --services --production --no-wait &&
        .venv/bin/python -m pytest -q -ra -p no:cacheprovider -m production \
            --junitxml=artifacts/pytest-production.xml tests/production
}

lanes=()
# On the way out, each lane still going and what it started (a run stops its own services on SIGTERM).
stop_lanes() {
    for pid in "${lanes[@]}"; do
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
}
trap stop_lanes EXIT
rm -f artifacts/pytest-*.status
{
    run 3.1 .venv-floor/bin/python -m pytest "${OTHER_RELEASES[@]}" --junitxml=artifacts/pytest-3.1.xml \
        "${FLOOR_TESTS[@]}" "$@"
    run 3.2 .venv-3.2/bin/python -m pytest "${OTHER_RELEASES[@]}" --junitxml=artifacts/pytest-3.2.xml \
        "${AIRFLOW_TESTS[@]}" "$@"
} &
lanes+=($!)
run production production_shape &
lanes+=($!)
wait "${lanes[@]}" || true
lanes=()
failed=()
for name in "${RUNS[@]}"; do
    echo "== $name =="
    tail -n 40 "artifacts/pytest-$name.log"
    [ "$(cat "artifacts/pytest-$name.status" 2>/dev/null)" = 0 ] || failed+=("$name")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test: the runs of ${failed[*]} failed (whole output in artifacts/pytest-<run>.log)" >&2
    exit 1
fi

# The package as a release ships it: wheel and sdist built and checked with twine, the wheel alone
# installed into a clean environment with the pinned Airflow, the provider registered there.
bash scripts/check_package.sh
