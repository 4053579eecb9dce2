"""
Every code sample in the documentation runs, or at least parses.

How a sample is marked
----------------------

A fenced block is exercised according to an HTML comment on the last non-blank line before its
opening fence (invisible when the Markdown is rendered)::

    <!-- test: dag data=/data/modelbit -->
    ```python
    ...
    ```

The kinds:

============  ========  =====================================================================
kind          language  what the test does
============  ========  =====================================================================
dag           python    parse into a ``DagBag`` with no connection defined (no import errors,
                        at least one DAG), then run every DAG with ``dag.test()`` against the
                        local Modelbit server; every task must succeed. Options:
                        ``data=PATH`` replaces PATH by a folder holding sample tables
                        (``customers.parquet|csv|jsonl``, ``partitions/part-00N.parquet``);
                        ``callbacks`` also runs the callback receiver and gives
                        ``modelbit_default`` the callback settings.
script        python    run as a program (300 s limit); ``emulator`` starts a local server and
                        replaces ``http://127.0.0.1:8765`` by its address.
pytest        python    save as a test module and run it with pytest; it must pass.
deployments   python    load as a ``--deployments`` file: its names are served by the emulator.
compile       python    compile only (samples needing cloud services or placeholders).
cli-help      bash      every command's options appear in its ``--help``.
cli-serve     bash      start the command (on a free port), wait until it is listening, stop it.
shell         bash      run with ``bash -eu``; ``emulator`` as for ``script``.
connection    bash      run the exports, then resolve each ``AIRFLOW_CONN_*`` through
                        ``ModelbitHook(...).settings``.
syntax        bash      ``bash -n`` only.
============  ========  =====================================================================

Unmarked blocks: ``ini`` and ``json`` are parsed; in files this checkout's docs owner does not
write (``docs/connection.md``, ``README.md``, ``docs/benchmarks.md``) an unmarked ``python``
block is compiled and an unmarked ``bash`` block is syntax-checked, or resolved as a connection
when it sets ``AIRFLOW_CONN_*``. In the guides below every ``python`` and ``bash`` block must
carry a marker, so no sample silently drops to a weaker check.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from harness.processes import ProcessSupervisor

from airflow_provider_modelbit.emulator import RunningEmulator, run_emulator
from tests.airflow_dags import parse_dags, run_dag
from tests.asgi_thread import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDES = ("index.md", "operators.md", "async-callbacks.md", "troubleshooting.md", "local-server.md")
# Interface sketches (signatures with alternatives written inline), not code to run.
NOT_SAMPLES = ("architecture.md",)
OTHER_DOCUMENTS = (ROOT / "README.md",)
SAMPLE_SERVER_URL = "http://127.0.0.1:8765"
CALLBACK_SECRET = "docs-samples-callback-secret-0123"
RUN_LIMIT_SECONDS = 300
MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<spec>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w+-]*)\s*$")
KINDS = {
    "python": ("dag", "script", "pytest", "deployments", "compile"),
    "bash": ("cli-help", "cli-serve", "shell", "connection", "syntax"),
    "ini": ("ini",),
    "json": ("json",),
}
MUST_BE_MARKED = ("python", "bash")
PROGRAMS = ("modelbit-emulator", "modelbit-callback-receiver", "modelbit-callback-cleanup")


# ---------------------------------------------------------------------- finding samples


@dataclass(frozen=True)
class Sample:
    """One fenced code block and how it is exercised."""

    document: Path
    line: int
    language: str
    code: str
    kind: str | None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.document.name}:{self.line}"

    def __str__(self) -> str:
        return f"{self.name} ({self.language}, {self.kind or 'unmarked'})"


def _marker_before(lines: list[str], fence_index: int) -> tuple[str | None, dict[str, str]]:
    for previous in reversed(lines[:fence_index]):
        if not previous.strip():
            continue
        match = MARKER.match(previous)
        if match is None:
            return None, {}
        kind, *words = match.group("spec").split()
        options = dict(word.partition("=")[::2] for word in words)
        return kind, options
    return None, {}


def samples_in(document: Path) -> list[Sample]:
    """Return the fenced blocks of a Markdown file, in order."""
    lines = document.read_text().splitlines()
    samples: list[Sample] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = len(opening.group("indent"))
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        kind, options = _marker_before(lines, index)
        samples.append(Sample(document, index + 1, opening.group("language"), code, kind, options))
        index = end + 1
    return samples


def documents() -> list[Path]:
    docs = [path for path in sorted(DOCS.glob("*.md")) if path.name not in NOT_SAMPLES]
    return docs + [path for path in OTHER_DOCUMENTS if path.exists()]


def all_samples() -> list[Sample]:
    return [sample for document in documents() for sample in samples_in(document)]


def effective_kind(sample: Sample) -> str | None:
    """The kind a sample is exercised as: its marker, else the default for its language."""
    if sample.kind is not None:
        return sample.kind
    if sample.language in ("ini", "json"):
        return sample.language
    if sample.language == "python":
        return "compile"
    if sample.language in ("bash", "sh", "shell"):
        return "connection" if "AIRFLOW_CONN_" in sample.code else "syntax"
    return None


SAMPLES = [sample for sample in all_samples() if effective_kind(sample) is not None]


# ---------------------------------------------------------------------- the environment


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment with the venv's programs first on PATH."""
    env = {**os.environ, **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("AIRFLOW_CONN_MODELBIT_DEFAULT", None)
    return env


def write_sample_tables(folder: Path, rows: int = 60) -> Path:
    """Customers in every input format the batch operator reads, the columns churn_scorer expects."""
    frame = pd.DataFrame(
        {
            "customer_id": [f"c-{n:05d}" for n in range(rows)],
            "tenure_months": [(n * 7) % 60 for n in range(rows)],
            "monthly_spend": [round(10 + (n * 3.7) % 90, 2) for n in range(rows)],
            "plan": [("free", "basic", "pro", "enterprise")[n % 4] for n in range(rows)],
        }
    )
    (folder / "partitions").mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "customers.parquet", index=False)
    frame.to_csv(folder / "customers.csv", index=False)
    frame.to_json(folder / "customers.jsonl", orient="records", lines=True)
    half = rows // 2
    frame.iloc[:half].to_parquet(folder / "partitions" / "part-000.parquet", index=False)
    frame.iloc[half:].to_parquet(folder / "partitions" / "part-001.parquet", index=False)
    return folder


@contextmanager
def _receiver(store_location: str) -> Iterator[str]:
    """The callback receiver app on 127.0.0.1, reading secrets from Airflow connections; yields its URL."""
    from airflow_provider_modelbit.callbacks.receiver import ConnectionSecretSource, create_callback_app
    from airflow_provider_modelbit.callbacks.store import CallbackStore

    app = create_callback_app(store=CallbackStore(store_location), secrets=ConnectionSecretSource())
    with serve_in_thread(app) as url:
        yield url


@dataclass
class SampleContext:
    """What a sample run may use: a scratch folder, the shared local server, the environment."""

    tmp_path: Path
    server: RunningEmulator
    monkeypatch: pytest.MonkeyPatch


@pytest.fixture
def context(
    tmp_path: Path, modelbit_emulator_session: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SampleContext]:
    modelbit_emulator_session.client.reset()
    modelbit_emulator_session.client.configure(allow_http_webhooks=True, webhook_time_scale=0.01)
    monkeypatch.delenv("AIRFLOW_CONN_MODELBIT_DEFAULT", raising=False)
    yield SampleContext(tmp_path, modelbit_emulator_session, monkeypatch)
    modelbit_emulator_session.client.reset()


# ---------------------------------------------------------------------- python samples


def _sample_source(sample: Sample, tmp_path: Path) -> str:
    code = sample.code
    if "data" in sample.options:
        code = code.replace(sample.options["data"], str(write_sample_tables(tmp_path / "data")))
    return code


def _parse_dags(dag_file: Path) -> Any:
    bag = parse_dags(dag_file)
    assert bag.import_errors == {}, f"the sample does not import: {bag.import_errors}"
    assert bag.dags, "the sample defines no DAG"
    return bag


def _run_dag(dag: Any) -> dict[str, str]:
    """Store the DAG, run it with dag.test(), return each task's final state."""
    run = run_dag(dag)
    return {
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
        for ti in run.get_task_instances()
    }


def _connect(context: SampleContext, extra: dict[str, str] | None = None) -> None:
    document = {"conn_type": "modelbit", "host": context.server.url, "extra": extra or {}}
    context.monkeypatch.setenv("AIRFLOW_CONN_MODELBIT_DEFAULT", json.dumps(document))


def run_dag_sample(sample: Sample, context: SampleContext) -> None:
    dag_file = context.tmp_path / "dags" / f"docs_sample_{sample.line}.py"
    dag_file.parent.mkdir()
    dag_file.write_text(_sample_source(sample, context.tmp_path))
    bag = _parse_dags(dag_file)
    if "callbacks" in sample.options:
        store = str(context.tmp_path / "callbacks")
        context.monkeypatch.setenv("AIRFLOW__MODELBIT__CALLBACK_STORE", store)
        with _receiver(store) as receiver_url:
            _connect(context, {"callback_base_url": receiver_url, "callback_secret": CALLBACK_SECRET})
            states = {dag_id: _run_dag(dag) for dag_id, dag in bag.dags.items()}
    else:
        _connect(context)
        states = {dag_id: _run_dag(dag) for dag_id, dag in bag.dags.items()}
    failed = {dag_id: s for dag_id, s in states.items() if set(s.values()) != {"success"}}
    assert not failed, f"tasks did not all succeed: {failed}"
    if "callbacks" in sample.options:
        assert context.server.client.batches(), "the DAG ran, but nothing was submitted asynchronously"


def _run_program(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_SECONDS
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _with_emulator(sample: Sample, code: str) -> tuple[str, Callable[[], Any]]:
    """Return the code aimed at a fresh local server (when the sample asks for one) and its stopper."""
    if "emulator" not in sample.options:
        return code, lambda: None
    running = run_emulator()
    server = running.__enter__()
    return code.replace(SAMPLE_SERVER_URL, server.url), lambda: running.__exit__(None, None, None)


def run_script_sample(sample: Sample, context: SampleContext) -> None:
    code, stop = _with_emulator(sample, _sample_source(sample, context.tmp_path))
    try:
        script = context.tmp_path / "sample.py"
        script.write_text(code)
        _run_program([sys.executable, str(script)], context.tmp_path, _environment())
    finally:
        stop()


def _plugin_arguments() -> list[str]:
    """Load the emulator fixtures explicitly while the pytest11 entry point is not installed."""
    from importlib.metadata import entry_points

    plugin = "airflow_provider_modelbit.emulator.pytest_plugin"
    installed = {entry.value for entry in entry_points(group="pytest11")}
    return [] if plugin in installed else ["-p", plugin]


def run_pytest_sample(sample: Sample, context: SampleContext) -> None:
    module = context.tmp_path / "test_docs_sample.py"
    module.write_text(_sample_source(sample, context.tmp_path))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_arguments()]
    result = _run_program(
        [*command, "--rootdir", str(context.tmp_path), str(module)], context.tmp_path, _environment()
    )
    assert " passed" in result.stdout and " failed" not in result.stdout, result.stdout


def run_deployments_sample(sample: Sample, context: SampleContext) -> None:
    from airflow_provider_modelbit.emulator.deployments import build_registry

    deployments_file = context.tmp_path / "my_models.py"
    deployments_file.write_text(sample.code)
    built_in = {entry["name"] for entry in build_registry().describe()}
    with run_emulator(deployments_file=str(deployments_file)) as server:
        served = {entry["name"] for entry in server.client.deployments()}
    assert served - built_in, "the deployments file registered no deployment of its own"


def compile_sample(sample: Sample, context: SampleContext) -> None:
    compile(sample.code, sample.name, "exec")


# ---------------------------------------------------------------------- bash samples


def _command_lines(code: str) -> list[list[str]]:
    """The sample's commands, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def _program_of(words: list[str]) -> list[str] | None:
    """The program a command line runs, as argv before its options, if it is one of ours."""
    for index, word in enumerate(words):
        if word in PROGRAMS:
            return [word]
        if (
            word == "-m"
            and index + 1 < len(words)
            and words[index + 1].startswith("airflow_provider_modelbit")
        ):
            return [sys.executable, "-m", words[index + 1]]
    return None


@functools.cache
def help_of(program: tuple[str, ...]) -> str:
    """The ``--help`` text of a program (each program is started once per session)."""
    return _run_program([*program, "--help"], ROOT, _environment()).stdout


def check_cli_help(sample: Sample, context: SampleContext) -> None:
    checked = 0
    for words in _command_lines(sample.code):
        program = _program_of(words)
        if program is None:
            continue
        help_text = help_of(tuple(program))
        for option in (word.partition("=")[0] for word in words if word.startswith("--")):
            assert option in help_text, f"{' '.join(program)} has no option {option}"
        checked += 1
    assert checked, "a cli-help sample must run at least one of " + ", ".join(PROGRAMS)


def run_cli_serve_sample(sample: Sample, context: SampleContext) -> None:
    (words,) = [words for words in _command_lines(sample.code) if _program_of(words)]
    ready_file = context.tmp_path / "ready"
    store = context.tmp_path / "callbacks"
    words = [word.replace("/var/lib/modelbit/callbacks", str(store)) for word in words]
    command = [*words, "--port", "0", "--ready-file", str(ready_file)]
    env = _environment(
        AIRFLOW_CONN_MODELBIT_DEFAULT=json.dumps({"conn_type": "modelbit", "host": "http://127.0.0.1:9"})
    )
    with ProcessSupervisor(cwd=context.tmp_path) as supervisor:
        server = supervisor.start(" ".join(words[:1]), command, env, context.tmp_path / "serve.log")
        url = server.wait_for_ready_file(ready_file)
        assert url.startswith("http://127.0.0.1:"), url


def run_shell_sample(sample: Sample, context: SampleContext) -> None:
    code, stop = _with_emulator(sample, sample.code)
    try:
        _run_program(["bash", "-euo", "pipefail", "-c", code], context.tmp_path, _environment())
    finally:
        stop()


RESOLVE_CONNECTIONS = """
import json, os, sys
from dataclasses import fields
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
resolved = []
for dump in sys.argv[1:]:
    name, value = open(dump).read().split("=", 1)
    os.environ[name] = value
    settings = ModelbitHook(name[len("AIRFLOW_CONN_"):].lower()).settings
    resolved.append({field.name: str(getattr(settings, field.name)) for field in fields(settings)})
print(json.dumps(resolved))
"""
EXPORT = re.compile(r"^export (AIRFLOW_CONN_\w+)=")
RESOLVES_TO = re.compile(r"^#\s*resolves to:\s*(?P<pairs>.*)$")


def _with_dumps(code: str, folder: Path) -> tuple[str, list[Path], list[dict[str, str]]]:
    """
    Return the code with each connection export followed by a dump of the variable's value.

    Also return the dump files and, per export, the ``# resolves to: field=value ...`` claims of the
    comment line right after it (empty when there is none).
    """
    lines, dumps, claims = [], [], []
    for line in code.splitlines():
        lines.append(line)
        if (claimed := RESOLVES_TO.match(line.strip())) and claims:
            claims[-1] = dict(pair.split("=", 1) for pair in claimed.group("pairs").split())
        if export := EXPORT.match(line.strip()):
            dump = folder / f"connection-{len(dumps)}"
            lines.append(f'printf "%s=%s" {export.group(1)} "${export.group(1)}" > {shlex.quote(str(dump))}')
            dumps.append(dump)
            claims.append({})
    return "\n".join(lines) + "\n", dumps, claims


def run_connection_sample(sample: Sample, context: SampleContext) -> None:
    """Each export resolves through ModelbitHook settings, to what its ``resolves to`` comment says."""
    script = context.tmp_path / "resolve.py"
    script.write_text(RESOLVE_CONNECTIONS)
    code, dumps, claims = _with_dumps(sample.code, context.tmp_path)
    assert dumps, "the sample exports no AIRFLOW_CONN_* connection"
    _run_program(["bash", "-eu", "-c", code], context.tmp_path, _environment())
    output = _run_program([sys.executable, str(script), *map(str, dumps)], context.tmp_path, _environment())
    for settings, claimed in zip(json.loads(output.stdout.splitlines()[-1]), claims, strict=True):
        assert settings["base_url"].startswith(("https://", "http://")), settings["base_url"]
        wrong = {
            key: (value, settings.get(key)) for key, value in claimed.items() if settings.get(key) != value
        }
        assert not wrong, f"'resolves to' differs from the settings read (claimed, read): {wrong}"


def check_bash_syntax(sample: Sample, context: SampleContext) -> None:
    _run_program(["bash", "-n", "-c", sample.code], context.tmp_path, _environment())


def parse_ini(sample: Sample, context: SampleContext) -> None:
    configparser.ConfigParser(interpolation=None).read_string(sample.code)


def parse_json(sample: Sample, context: SampleContext) -> None:
    json.loads(sample.code)


RUNNERS: dict[str, Callable[[Sample, SampleContext], None]] = {
    "dag": run_dag_sample,
    "script": run_script_sample,
    "pytest": run_pytest_sample,
    "deployments": run_deployments_sample,
    "compile": compile_sample,
    "cli-help": check_cli_help,
    "cli-serve": run_cli_serve_sample,
    "shell": run_shell_sample,
    "connection": run_connection_sample,
    "syntax": check_bash_syntax,
    "ini": parse_ini,
    "json": parse_json,
}
NEEDS_AIRFLOW_DB = ("dag", "pytest")


# ---------------------------------------------------------------------- the tests


class TestGuides:
    """The guides exist, link to each other, and mark every runnable block."""

    @pytest.mark.parametrize("guide", GUIDES)
    def test_guide_exists_and_has_a_title(self, guide: str) -> None:
        text = (DOCS / guide).read_text()
        assert text.startswith("# "), f"{guide} must start with a level-1 title"

    def test_index_links_resolve(self) -> None:
        """Every relative link in the index points at a file in the checkout."""
        links = re.findall(r"\]\(([^)#\s]+)", (DOCS / "index.md").read_text())
        local = [link for link in links if "://" not in link]
        assert {f"{name}" for name in GUIDES if name != "index.md"} <= set(local)
        missing = [link for link in local if not (DOCS / link).exists()]
        assert not missing, f"index.md links to missing files: {missing}"

    @pytest.mark.parametrize("guide", GUIDES)
    def test_every_python_and_bash_block_is_marked(self, guide: str) -> None:
        unmarked = [
            str(sample)
            for sample in samples_in(DOCS / guide)
            if sample.language in MUST_BE_MARKED and sample.kind is None
        ]
        assert not unmarked, f"add a <!-- test: KIND --> marker before: {unmarked}"

    def test_markers_name_known_kinds(self) -> None:
        wrong = [
            str(sample)
            for sample in all_samples()
            if sample.kind is not None and sample.kind not in KINDS.get(sample.language, ())
        ]
        assert not wrong, f"unknown kind for the block's language: {wrong}"


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: f"{sample.name}-{effective_kind(sample)}")
def test_sample(sample: Sample, context: SampleContext, request: pytest.FixtureRequest) -> None:
    """The sample runs as its marker says (see the module docstring)."""
    kind = effective_kind(sample)
    assert kind is not None
    if kind in NEEDS_AIRFLOW_DB:
        request.getfixturevalue("airflow_db")
    RUNNERS[kind](sample, context)
