#!/usr/bin/env bash
# Build the wheel and sdist as a release would, check their metadata with twine, install the wheel
# alone into a clean environment with the pinned Airflow, and check that Airflow registers the
# provider there: `airflow providers list`, the documentation link, the connection form and the
# TaskFlow decorator. Uses only the registries the bootstrap uses; leaves nothing behind.
#   CONSTRAINTS  the pinned set (default constraints/airflow-3.3.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

CONSTRAINTS=${CONSTRAINTS:-constraints/airflow-3.3.txt}
work=$(mktemp -d "${TMPDIR:-/tmp}/modelbit-package.XXXXXX")
trap 'rm -rf "$work"' EXIT

.venv/bin/python -m build --sdist --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
.venv/bin/python -m twine check --strict "$work"/dist/*

# The licence files travel in both distributions, and the type marker in the wheel.
.venv/bin/python - "$work"/dist/*.whl "$work"/dist/*.tar.gz <<'PY'
import sys, tarfile, zipfile

wheel, sdist = sys.argv[1:]
wheel_names = zipfile.ZipFile(wheel).namelist()
sdist_names = [name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name]
for wanted in ("LICENSE", "NOTICE"):
    assert any(n.endswith(f".dist-info/licenses/{wanted}") for n in wheel_names), f"{wanted} not in {wheel}"
    assert wanted in sdist_names, f"{wanted} not in {sdist}"
assert "airflow_provider_modelbit/py.typed" in wheel_names, "py.typed not in the wheel"
assert "CHANGELOG.md" in sdist_names, "CHANGELOG.md not in the sdist"
print(f"package: LICENSE, NOTICE in both distributions; py.typed in the wheel")
PY

.venv/bin/uv venv --quiet -p "$(.venv/bin/python -c 'import sys; print(sys.executable)')" "$work/venv"
.venv/bin/uv pip install --quiet -p "$work/venv/bin/python" -c "$CONSTRAINTS" "$work"/dist/*.whl

export AIRFLOW_HOME="$work/airflow-home"
"$work/venv/bin/airflow" providers list -o json >"$work/providers.json" 2>"$work/providers.log" \
    || { cat "$work/providers.log"; exit 1; }
"$work/venv/bin/python" - "$work/providers.json" <<'PY'
import json, sys

from airflow.providers_manager import ProvidersManager

listed = {row["package_name"]: row for row in json.load(open(sys.argv[1]))}
assert "airflow-provider-modelbit" in listed, f"airflow providers list shows no modelbit: {sorted(listed)}"
manager = ProvidersManager()
info = manager.providers["airflow-provider-modelbit"]
assert info.data.get("documentation-url", "").startswith("https://"), "no documentation link"
behaviour = manager.field_behaviours["modelbit"]
assert behaviour["relabeling"] == {"host": "Workspace URL", "password": "API Key"}, behaviour
widgets = {name for name in manager.connection_form_widgets if name.startswith("extra__modelbit__")}
assert "extra__modelbit__workspace" in widgets, f"connection form extras missing: {sorted(widgets)}"
assert "modelbit" in manager.taskflow_decorators, "@task.modelbit is not registered"
print(
    f"package: airflow-provider-modelbit {info.version} registered in a clean environment; "
    f"documentation {info.data['documentation-url']}; {len(widgets)} connection form extras"
)
PY
