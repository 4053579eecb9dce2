"""Wire compatibility with Modelbit's own client: the same inputs give the same request bodies.

The official client (``modelbit.get_inference``, 0.44.3, in its own environment made by
``scripts/official_client_env.sh``) and the hook send every input of ``corpus.py`` to one local
Modelbit server; the request bodies it recorded must decode to the same values, chunk for chunk,
except the differences documented in ``docs/operators.md`` ("How values are encoded"), for which
the provider's value is asserted instead. One client process sends the whole corpus.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CORPUS_FILE = HERE / "corpus.py"
CLIENT_SCRIPT = HERE / "official_client_run.py"
# Creating the client's environment downloads pinned wheels the first time: minutes on a slow link.
SETUP_TIMEOUT_SECONDS = 900
CLIENT_TIMEOUT_SECONDS = 300

_spec = importlib.util.spec_from_file_location("wire_corpus", CORPUS_FILE)
assert _spec is not None and _spec.loader is not None
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)


@pytest.fixture(scope="module")
def official_python() -> Path:
    """The official client's interpreter; its environment is created or brought up to date first."""
    bench_venv = Path(os.environ.get("BENCH_VENV", REPO / ".venv-bench"))
    env = {**os.environ, "BENCH_VENV": str(bench_venv)}
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        env["UV"] = str(uv)
    subprocess.run(
        ["bash", str(REPO / "scripts" / "official_client_env.sh")],
        env=env,
        check=True,
        timeout=SETUP_TIMEOUT_SECONDS,
    )
    return bench_venv / "bin" / "python"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningEmulator]:
    with run_emulator() as running:
        yield running


def _bodies_by_input(records: list[dict[str, Any]]) -> dict[int, list[Any]]:
    """The ``data`` of each recorded inference request, grouped by the input's position."""
    grouped: dict[int, list[Any]] = {}
    for record in records:
        if record["method"] != "POST" or not record["path"].startswith("/v1/"):
            continue
        assert record["body"] is not None, f"request body of {record['path']} too big to be recorded"
        body = json.loads(record["body"])
        grouped.setdefault(body["timeout_seconds"] - 1, []).append(body["data"])
    return grouped


@pytest.fixture(scope="module")
def recorded(official_python: Path, server: RunningEmulator, tmp_path_factory, modelbit_conn_env) -> Any:
    """Send the corpus with the official client, then with the hook; return what the server recorded."""
    outcome_file = tmp_path_factory.mktemp("wire") / "outcomes.json"
    subprocess.run(
        [str(official_python), str(CLIENT_SCRIPT), str(CORPUS_FILE), server.url, str(outcome_file)],
        check=True,
        timeout=CLIENT_TIMEOUT_SECONDS,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    outcomes = json.loads(outcome_file.read_text())
    client_bodies = _bodies_by_input(server.client.requests())
    server.client.reset()
    hook = ModelbitHook(modelbit_conn_env, batch_size=corpus.BATCH_SIZE, max_concurrency=1)
    for position, (_, make) in enumerate(corpus.all_inputs()):
        hook.get_inference("echo", make(), timeout_seconds=position + 1)
    return outcomes, client_bodies, _bodies_by_input(server.client.requests())


@pytest.fixture(scope="module")
def modelbit_conn_env(server: RunningEmulator) -> Iterator[str]:
    """A Modelbit connection to the module's server, defined through the environment."""
    conn_id = "modelbit_wire"
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    os.environ[variable] = json.dumps({"conn_type": "modelbit", "host": server.url})
    yield conn_id
    os.environ.pop(variable, None)


def test_corpus_is_large_enough() -> None:
    assert len(corpus.CORPUS) >= 40


@pytest.mark.parametrize(
    ("position", "name"), [(i, name) for i, (name, _) in enumerate(corpus.CORPUS.items())]
)
def test_hook_sends_what_the_official_client_sends(recorded, position: int, name: str) -> None:
    """Chunk for chunk, the hook's request bodies decode to the official client's values."""
    outcomes, client_bodies, hook_bodies = recorded
    assert outcomes[name] == "ok"
    assert hook_bodies.get(position, []) == client_bodies.get(position, [])


@pytest.mark.parametrize("name", list(corpus.DIFFERENCES))
def test_documented_differences(recorded, name: str) -> None:
    """Where the provider differs on purpose, it sends the documented value and the client does not."""
    outcomes, client_bodies, hook_bodies = recorded
    position = [input_name for input_name, _ in corpus.all_inputs()].index(name)
    expected = corpus.DIFFERENCES[name][1]
    assert hook_bodies[position] == [expected]
    assert outcomes[name] != "ok" or client_bodies[position] != [expected]


def test_inputs_spanning_chunks_were_chunked(recorded) -> None:
    """The comparison covers several requests per input where the input spans chunks."""
    _, client_bodies, hook_bodies = recorded
    for name in ("batch rows over several chunks", "frame over several chunks"):
        position = list(corpus.CORPUS).index(name)
        assert len(client_bodies[position]) == len(hook_bodies[position]) == 3


def test_non_unique_index_results_align_with_rows(recorded, modelbit_conn_env) -> None:
    """A DataFrame whose index repeats is scored as the official client scores it, row for row."""
    frame = pd.DataFrame({"x": [1, 2, 3]}, index=[5, 5, 4])
    answer = ModelbitHook(modelbit_conn_env).get_inference("echo", frame)
    assert answer == [[5, {"x": 1}], [5, {"x": 2}], [4, {"x": 3}]]
