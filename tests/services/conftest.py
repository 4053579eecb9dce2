"""Fixtures starting the real Airflow services once per test session for the harness tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_rest import AirflowRestClient
from airflow_services import AirflowServices

REPO_ROOT = Path(__file__).resolve().parents[2]

HARNESS_DAGS = Path(__file__).resolve().parent / "dags"
ARTIFACTS = REPO_ROOT / "artifacts"


@pytest.fixture(scope="session")
def database_cache() -> Path:
    """Migrated databases are cached here, so only the first start of a machine runs the migrations."""
    return ARTIFACTS / "cache"


@pytest.fixture(scope="session")
def airflow_services(database_cache: Path) -> Iterator[AirflowServices]:
    """api-server, scheduler, triggerer and dag-processor on 127.0.0.1, logs kept under artifacts/services."""
    with AirflowServices(
        dags_folder=HARNESS_DAGS,
        logs_folder=ARTIFACTS / "services" / "logs",
        database_cache=database_cache,
    ) as services:
        yield services


@pytest.fixture(scope="session")
def rest_client(airflow_services: AirflowServices) -> Iterator[AirflowRestClient]:
    with airflow_services.rest_client() as client:
        yield client
