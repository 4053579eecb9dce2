"""``python -m airflow_provider_modelbit.emulator``: the same as ``modelbit-emulator``."""

from __future__ import annotations

from airflow_provider_modelbit.emulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
