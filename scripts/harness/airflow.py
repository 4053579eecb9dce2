"""Airflow as the scripts use it: the ``airflow`` command, a run's environment, its database, its DAGs.

Every ``airflow`` command runs under a :class:`~harness.processes.ProcessSupervisor`, so an
interrupt or a dying script stops it with everything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.layout import RunLayout
from harness.processes import ProcessSupervisor

#: Seconds ``airflow db migrate`` may take on a busy machine (about 40 s on two idle cores).
MIGRATE_TIMEOUT_SECONDS = 600.0
#: Seconds an ``airflow ... list`` command may take (it parses every DAG file).
LISTING_TIMEOUT_SECONDS = 300.0


class AirflowCommandError(RuntimeError):
    """An ``airflow`` command failed; the message names it and the log holding its output."""


def airflow_executable() -> str:
    """The ``airflow`` command of the interpreter running the script (the project's venv)."""
    beside_python = Path(sys.executable).with_name("airflow")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("airflow")
    if found is None:
        raise AirflowCommandError("The 'airflow' command was not found; install apache-airflow in this venv.")
    return found


def run_environment(layout: RunLayout) -> dict[str, str]:
    """
    The environment every process of one run shares: its home, database, DAGs, data and callback store.

    Airflow options and connections of the calling shell are left out, so a run depends on nothing
    but its layout and what the caller adds.
    """
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(layout.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{layout.database}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(layout.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(layout.task_logs),
            "AIRFLOW__MODELBIT__CALLBACK_STORE": str(layout.callback_store),
            "MODELBIT_EXAMPLES_DATA": str(layout.data),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_airflow(
    supervisor: ProcessSupervisor,
    arguments: Sequence[str],
    env: Mapping[str, str],
    log_file: Path,
    timeout: float,
    *,
    check: bool = True,
) -> int:
    """
    Run ``airflow <arguments>`` with its output appended to ``log_file``; its exit code (-1: timed out).

    :param check: raise, naming the log, when the command fails or times out.
    """
    command = [airflow_executable(), *arguments]
    code = supervisor.run(f"airflow {arguments[0]}", command, env, log_file, timeout)
    if code != 0 and check:
        why = f"was stopped after {timeout:.0f} s" if code == -1 else f"exited with {code}"
        raise AirflowCommandError(f"'airflow {' '.join(arguments)}' {why}; see {log_file}")
    return code


def create_database(
    supervisor: ProcessSupervisor,
    layout: RunLayout,
    env: Mapping[str, str],
    cache: Path | None = None,
) -> None:
    """
    Give the run a migrated metadata database.

    :param cache: folder keeping a freshly migrated database per Airflow version; a run copies it
        instead of running the ~40 s ``airflow db migrate`` again. ``None`` always migrates.
    """
    template = None if cache is None else cache / f"airflow-{metadata.version('apache-airflow-core')}.db"
    if template is not None and template.exists():
        shutil.copyfile(template, layout.database)
        return
    log_file = layout.logs_folder / "airflow-db-migrate.log"
    run_airflow(supervisor, ["db", "migrate"], env, log_file, MIGRATE_TIMEOUT_SECONDS)
    if template is not None:
        # Copy then rename, so a concurrent run never copies a half-written template.
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
        shutil.copyfile(layout.database, partial)
        os.replace(partial, template)


@dataclass(frozen=True)
class AirflowListing:
    """The JSON rows an ``airflow ... list --local`` command printed, and whether files failed to import."""

    entries: list[dict[str, Any]]
    import_errors: bool


def list_local(
    supervisor: ProcessSupervisor,
    layout: RunLayout,
    env: Mapping[str, str],
    *command: str,
    check: bool = True,
) -> AirflowListing:
    """
    ``airflow <command> --local --output json``; its output is kept in ``logs/airflow-dags.log``.

    :param check: raise when the command fails (``list-import-errors`` fails when there are some).
    """
    log_file = layout.logs_folder / "airflow-dags.log"
    output_file = layout.logs_folder / f"airflow-{'-'.join(command[:2])}.json"
    output_file.unlink(missing_ok=True)
    arguments = [*command, "--local", "--output", "json"]
    run_airflow(supervisor, arguments, env, output_file, LISTING_TIMEOUT_SECONDS, check=check)
    output = output_file.read_text()
    with log_file.open("a") as log:
        log.write(f"$ airflow {' '.join(command)}\n{output}\n")
    return AirflowListing(json_list_in_output(output), "Failed to load all files" in output)


def json_list_in_output(output: str) -> list[dict[str, Any]]:
    # Airflow prints warnings on stdout too; the listing is the line holding a JSON array.
    for line in reversed(output.splitlines()):
        if line.startswith("["):
            with contextlib.suppress(ValueError):
                return list(json.loads(line))
    raise AirflowCommandError(f"'airflow dags list' printed no DAG listing:\n{output[-2000:]}")


def discover_dag_ids(supervisor: ProcessSupervisor, layout: RunLayout, env: Mapping[str, str]) -> list[str]:
    """
    The DAG ids as Airflow parses them; fail, naming the files, if any does not import.

    DAGs on a time schedule come first, so that Asset-scheduled DAGs run after the DAGs whose
    outputs they read.
    """
    listing = list_local(supervisor, layout, env, "dags", "list", "--columns", "dag_id,timetable_periodic")
    if listing.import_errors:
        errors = list_local(supervisor, layout, env, "dags", "list-import-errors", check=False)
        files = sorted({entry.get("filepath", "?") for entry in errors.entries})
        raise AirflowCommandError(
            f"DAG files failed to import: {', '.join(files)}; see {layout.logs_folder / 'airflow-dags.log'}"
        )
    ordered = sorted(listing.entries, key=lambda entry: (not is_periodic(entry), entry["dag_id"]))
    return [entry["dag_id"] for entry in ordered]


def is_periodic(entry: Mapping[str, Any]) -> bool:
    # The JSON listing renders booleans as the strings "True" / "False".
    return str(entry.get("timetable_periodic")).lower() == "true"


def select_dag_ids(found: Sequence[str], only: Sequence[str]) -> list[str]:
    """``found`` narrowed to ``only`` (all when empty), in ``found``'s order; unknown names fail."""
    unknown = sorted(set(only) - set(found))
    if unknown:
        raise AirflowCommandError(f"--only names unknown DAGs {unknown}; the examples are {list(found)}")
    return [dag_id for dag_id in found if not only or dag_id in only]


__all__ = [
    "AirflowCommandError",
    "AirflowListing",
    "airflow_executable",
    "create_database",
    "discover_dag_ids",
    "json_list_in_output",
    "list_local",
    "run_airflow",
    "run_environment",
    "select_dag_ids",
]
