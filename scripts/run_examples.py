"""Run every example DAG end to end against the local Modelbit server, then report what happened.

The steps live in :mod:`harness.examples`; this is the command around them. It exits 0 only if
every DAG run succeeded, 1 if one failed, 2 if the run could not start, and 130 when Ctrl-C or
SIGTERM stopped it, which stops everything it started first. ``--services`` runs the same DAGs on
the real Airflow services (api-server, scheduler, triggerer, dag-processor) instead and leaves the
UI up until Ctrl-C; ``--services --production`` in the production shape (PostgreSQL, Celery,
S3); ``--only DAG_ID`` runs a subset; ``--rows``/``--partitions`` size the sample.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from example_data import DEFAULT_PARTITIONS, DEFAULT_ROWS
from harness.airflow import AirflowCommandError
from harness.examples import REPOSITORY, ExamplesOptions, run_examples
from harness.layout import LayoutError
from harness.outcomes import DagOutcome
from harness.processes import ProcessError, ProcessSupervisor, interrupts_stop
from harness.production import ProductionStackError
from harness.report import render_report

DEFAULT_RUN_FOLDER = REPOSITORY / ".airflow" / "examples"
#: Exit status of a run stopped by Ctrl-C or SIGTERM, as a shell reports a command ended by SIGINT.
INTERRUPTED = 130


def parse_arguments(argv: Sequence[str] | None) -> ExamplesOptions:
    parser = argparse.ArgumentParser(
        description="Run the example DAGs end to end against the local Modelbit server and report.",
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="customers in the sample table")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="sample partition files")
    parser.add_argument(
        "--only", action="append", default=[], metavar="DAG_ID", help="run only this DAG (repeatable)"
    )
    parser.add_argument(
        "--date",
        default=datetime.now(timezone.utc).date().isoformat(),
        help="logical date (default: today, UTC)",
    )
    parser.add_argument(
        "--run-folder", type=Path, default=DEFAULT_RUN_FOLDER, help="where data, logs and AIRFLOW_HOME go"
    )
    parser.add_argument(
        "--database-cache",
        type=Path,
        default=None,
        help="folder keeping a migrated Airflow database to copy instead of migrating (default: migrate)",
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="run on the real Airflow services and keep the UI up on 127.0.0.1 until Ctrl-C",
    )
    parser.add_argument(
        "--production",
        action="store_true",
        help="with --services: PostgreSQL, CeleryExecutor on Redis with two workers, two triggerers, "
        "and the data on S3 (SeaweedFS); needs scripts/bootstrap_production.sh",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="with --services: stop the services after the report instead of waiting for Ctrl-C",
    )
    arguments = parser.parse_args(argv)
    if arguments.production and not arguments.services:
        parser.error("--production runs on the Airflow services; add --services")
    return ExamplesOptions(
        run_folder=arguments.run_folder,
        rows=arguments.rows,
        partitions=arguments.partitions,
        only=arguments.only,
        logical_date=arguments.date,
        services=arguments.services,
        keep_up=arguments.services and not arguments.no_wait,
        database_cache=arguments.database_cache,
        production=arguments.production,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_arguments(argv)

    def report(outcomes: Sequence[DagOutcome]) -> None:
        print(render_report(outcomes, options.layout.logs_folder), flush=True)

    try:
        with ProcessSupervisor(cwd=REPOSITORY) as supervisor, interrupts_stop(supervisor):
            outcomes = run_examples(options, supervisor, report)
            if not options.keep_up:
                report(outcomes)
    except KeyboardInterrupt:
        print("\nInterrupted; everything this run started has been stopped.", file=sys.stderr)
        return INTERRUPTED
    except (AirflowCommandError, LayoutError, ProcessError, ProductionStackError) as error:
        print(f"\nrun_examples: {error}", file=sys.stderr)
        return 2
    return 0 if outcomes and all(outcome.succeeded for outcome in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
