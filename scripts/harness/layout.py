"""Where one run of Airflow keeps its files: one layout for the examples run and the services harness.

A run has an ``AIRFLOW_HOME`` (configuration and the SQLite metadata database), a logs folder
(process output and task logs), the DAGs it loads, its data and a callback store. The examples run
puts all of them under one run folder (:meth:`RunLayout.in_folder`); the services harness may keep
its logs apart from a temporary home, so that CI can upload them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

#: Written into a run folder so that a later run only ever deletes a folder a run created.
RUN_FOLDER_MARKER = ".modelbit-examples-run"


class LayoutError(RuntimeError):
    """A run folder cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class RunLayout:
    """
    The folders of one run.

    :param home: the ``AIRFLOW_HOME`` (configuration, the SQLite database, generated files).
    :param logs_folder: process output (``<name>.log``) and task logs (``tasks/``).
    :param dags_folder: the DAG files Airflow loads.
    :param data: input and output data of the DAGs.
    :param callback_store: where webhook deliveries wait for their tasks.
    """

    home: Path
    logs_folder: Path
    dags_folder: Path
    data: Path
    callback_store: Path

    @classmethod
    def in_folder(cls, root: Path, dags_folder: Path) -> RunLayout:
        """Everything of the run under ``root``: ``airflow-home/``, ``logs/``, ``data/``, ``callbacks/``."""
        return cls(
            home=root / "airflow-home",
            logs_folder=root / "logs",
            dags_folder=dags_folder,
            data=root / "data",
            callback_store=root / "callbacks",
        )

    @property
    def database(self) -> Path:
        return self.home / "airflow.db"

    @property
    def task_logs(self) -> Path:
        return self.logs_folder / "tasks"

    def create(self) -> None:
        """Create the run's folders (the DAGs folder must exist already)."""
        if not self.dags_folder.is_dir():
            raise LayoutError(f"DAGs folder {self.dags_folder} does not exist; pass an existing folder.")
        for folder in (self.home, self.logs_folder, self.task_logs, self.data, self.callback_store):
            folder.mkdir(parents=True, exist_ok=True)


def recreate_run_folder(root: Path) -> None:
    """Empty ``root`` for a new run and mark it, refusing to delete a folder no run created."""
    if root.exists():
        if any(root.iterdir()) and not (root / RUN_FOLDER_MARKER).exists():
            raise LayoutError(
                f"{root} exists and was not created by run_examples.py; "
                "choose another --run-folder or remove it yourself."
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / RUN_FOLDER_MARKER).touch()


__all__ = ["RUN_FOLDER_MARKER", "LayoutError", "RunLayout", "recreate_run_folder"]
