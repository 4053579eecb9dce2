"""Start one client workload in a fresh process and read back what it measured about itself."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.clients.report import REPORT_PREFIX

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
_OUTPUT_TAIL_CHARS = 3_000


class WorkloadFailed(RuntimeError):
    """A client workload process exited with an error or reported nothing."""

    def summary(self) -> str:
        """One line for a table: what failed, and the last line the process printed (its error, as a rule)."""
        first, _, output = str(self).partition("\n")
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        return f"{first} {lines[-1]}" if lines else first.removesuffix(" Its last output:")


def _report_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(REPORT_PREFIX):
            return json.loads(line[len(REPORT_PREFIX) :])
    return None


def run_workload(
    python: Path, module: str, arguments: Sequence[str], env: Mapping[str, str], timeout_seconds: float
) -> dict[str, Any]:
    """Run ``python -m module arguments`` from the repository root and return its report."""
    command = [str(python), "-m", module, *arguments]
    finished = subprocess.run(
        command, cwd=REPOSITORY_ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout_seconds
    )
    report = _report_line(finished.stdout)
    if finished.returncode != 0 or report is None:
        raise WorkloadFailed(
            f"Benchmark workload {module} exited with status {finished.returncode} and "
            f"{'no' if report is None else 'a'} report. Its last output:\n"
            f"{(finished.stdout + finished.stderr)[-_OUTPUT_TAIL_CHARS:]}"
        )
    return report
