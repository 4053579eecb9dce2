"""Where the workloads run: the two Python environments, the local server and a scratch folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

BENCHMARK_CONN_ID = "modelbit_benchmark"
# Long enough for the 2,000,000-row memory run on a slow shared machine, short enough to end a hang.
WORKLOAD_TIMEOUT_SECONDS = 1_800.0


@dataclass(frozen=True)
class BenchmarkEnvironment:
    """
    What every workload of one run shares.

    :param main_python: the provider's environment (Airflow, the provider, orjson, pyarrow).
    :param bench_python: the benchmark-only environment with the official client and matplotlib.
    :param emulator_url: base URL of the one local Modelbit server every client talks to.
    :param work_dir: scratch folder for input tables, outputs and the Airflow home.
    """

    main_python: Path
    bench_python: Path
    emulator_url: str
    work_dir: Path

    def scratch(self, name: str) -> Path:
        """A path inside the scratch folder."""
        return self.work_dir / name

    def child_env(self) -> dict[str, str]:
        """Environment of client processes: a private Airflow home and the benchmark connection."""
        connection = {"conn_type": "modelbit", "host": self.emulator_url}
        airflow_home = self.scratch("airflow-home")
        airflow_home.mkdir(parents=True, exist_ok=True)
        inherited = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
        return {
            **inherited,
            # Each workload is a fresh interpreter: cached bytecode (kept in the scratch folder, not
            # in the environments) saves recompiling Airflow every time. Start-up is not measured.
            "PYTHONPYCACHEPREFIX": str(self.scratch("pycache")),
            "AIRFLOW_HOME": str(airflow_home),
            f"AIRFLOW_CONN_{BENCHMARK_CONN_ID.upper()}": json.dumps(connection),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }
