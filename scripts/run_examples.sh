#!/usr/bin/env bash
# The main-job command: set up from nothing (scripts/bootstrap.sh), then run every example DAG end to
# end against the local Modelbit server and print a report (scripts/run_examples.py).
# Arguments are passed on, e.g.:  --rows 5000   --only modelbit_batch_scoring   --services
# With --production (and --services) scripts/bootstrap_production.sh also installs PostgreSQL, Redis,
# SeaweedFS and the Celery and Amazon providers.
# Exits non-zero if any DAG run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

case " $* " in
    *" --production "*) bash scripts/bootstrap_production.sh ;;
    *) bash scripts/bootstrap.sh ;;
esac
exec "${VENV:-.venv}/bin/python" scripts/run_examples.py "$@"
