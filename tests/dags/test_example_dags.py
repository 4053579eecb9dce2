"""The example DAGs parse on a machine with no Modelbit connection and no network.

Each file in ``dags_examples/`` is parsed on its own with a real ``DagBag`` while every way of
looking up a connection, and every outgoing socket connection, is made to fail the test.
"""

from __future__ import annotations

import ast
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.airflow_dags import parse_dags

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "dags_examples"
EXAMPLE_FILES = sorted(path for path in EXAMPLES_DIR.glob("*.py") if not path.name.startswith("_"))
# Each place an Airflow 3 process can resolve a connection from while a DAG file is imported.
CONNECTION_LOOKUPS = (
    "airflow.sdk.bases.hook.BaseHook.get_connection",
    "airflow.sdk.bases.hook.BaseHook.aget_connection",
    "airflow.sdk.definitions.connection.Connection.get",
    "airflow.sdk.definitions.connection.Connection.async_get",
    "airflow.sdk.execution_time.context._get_connection",
    "airflow.models.connection.Connection.get_connection_from_secrets",
)


class ForbiddenCalls:
    """Records calls that parsing must never make, and makes each of them fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def forbid(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(f"{name}{args!r}")
            raise AssertionError(f"{name} was called while parsing an example DAG")

        return refuse


@pytest.fixture
def examples_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh AIRFLOW_HOME and examples data folder, with no Modelbit connection defined."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("MODELBIT_EXAMPLES_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("AIRFLOW_CONN_MODELBIT_DEFAULT", raising=False)
    return tmp_path / "data"


@pytest.fixture
def forbidden_calls(examples_environment: Path) -> Iterator[ForbiddenCalls]:
    """Connection lookups and outgoing socket connections fail and are recorded."""
    forbidden = ForbiddenCalls()
    patches = [mock.patch(target, side_effect=forbidden.forbid(target)) for target in CONNECTION_LOOKUPS]
    patches.append(mock.patch.object(socket.socket, "connect", forbidden.forbid("socket.connect")))
    patches.append(mock.patch.object(socket.socket, "connect_ex", forbidden.forbid("socket.connect_ex")))
    for patch in patches:
        patch.start()
    try:
        yield forbidden
    finally:
        for patch in reversed(patches):
            patch.stop()


def parse_example(path: Path) -> Any:
    return parse_dags(path)


def test_examples_are_present() -> None:
    """The four documented examples ship in dags_examples/."""
    names = {path.stem for path in EXAMPLE_FILES}
    assert {
        "modelbit_single_inference",
        "modelbit_batch_scoring",
        "modelbit_async_callback",
        "modelbit_partitioned_scoring",
    } <= names


@pytest.mark.parametrize("example_file", EXAMPLE_FILES, ids=lambda path: path.stem)
class TestExampleDagFile:
    """Every example DAG file, parsed the way the dag-processor parses it."""

    def test_parses_without_import_errors(self, example_file: Path, forbidden_calls: ForbiddenCalls) -> None:
        """No import errors and at least one DAG, with no connection and no network."""
        dagbag = parse_example(example_file)
        assert dagbag.import_errors == {}
        assert len(dagbag.dags) >= 1

    def test_parsing_looks_up_no_connection(
        self, example_file: Path, forbidden_calls: ForbiddenCalls
    ) -> None:
        """Operators resolve their connection when they run, never while the file is parsed."""
        parse_example(example_file)
        assert forbidden_calls.calls == []

    def test_module_docstring_says_what_it_shows(self, example_file: Path) -> None:
        docstring = ast.get_docstring(ast.parse(example_file.read_text()))
        assert docstring, f"{example_file.name} has no module docstring"
        assert len(docstring.split()) >= 20, f"{example_file.name}: the docstring is too short to explain"

    def test_templates_render_for_runs_triggered_by_hand(self, example_file: Path) -> None:
        """Airflow 3 gives manual runs no logical date, so ``ds`` and friends are undefined there."""
        expressions = re.findall(r"\{\{(.*?)\}\}", example_file.read_text())
        variables = [re.sub(r"\|\s*\w+", "", expression) for expression in expressions]  # drop filters
        for name in ("ds", "ds_nodash", "ts", "logical_date", "data_interval_start", "data_interval_end"):
            used = [v for v in variables if re.search(r"(?<![.\w])" + name + r"\b", v)]
            assert not used, f"{example_file.name} templates {name!r}, which a run triggered by hand lacks"

    def test_dags_are_scheduled(self, example_file: Path, forbidden_calls: ForbiddenCalls) -> None:
        """The examples are realistic pipelines that run on a schedule, not manual-only DAGs."""
        for dag_id, dag in parse_example(example_file).dags.items():
            assert dag.timetable.can_be_scheduled, f"{dag_id} has no schedule"

    def test_path_params_default_under_examples_data(
        self, example_file: Path, examples_environment: Path, forbidden_calls: ForbiddenCalls
    ) -> None:
        """Input and output locations default under $MODELBIT_EXAMPLES_DATA, where the data is generated."""
        for dag_id, dag in parse_example(example_file).dags.items():
            for name, value in dag.params.dump().items():
                if isinstance(value, str) and "/" in value:
                    assert Path(value).is_relative_to(examples_environment), (
                        f"{dag_id}: param {name!r} defaults to {value!r}, outside $MODELBIT_EXAMPLES_DATA"
                    )
