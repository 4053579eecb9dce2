"""The services harness (scripts/airflow_services.py): environment, start-up checks, real services."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from airflow_services import (
    LOOPBACK,
    AirflowServices,
    AirflowServicesError,
    airflow_environment,
    build_parser,
    free_port,
)
from harness.layout import RunLayout
from harness.watchdog import group_alive

PROVIDER_DISTRIBUTION = "airflow-provider-modelbit"


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    return RunLayout.in_folder(tmp_path, dags_folder=tmp_path / "dags")


class TestAirflowEnvironment:
    """Every service of one run shares one environment that keeps them on loopback and in sync."""

    @pytest.mark.parametrize(
        ("variable", "expected"),
        [
            ("AIRFLOW__API__HOST", LOOPBACK),
            ("AIRFLOW__API__PORT", "8123"),
            ("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8123"),
            ("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://127.0.0.1:8123/execution/"),
            ("AIRFLOW__CORE__EXECUTOR", "LocalExecutor"),
            ("AIRFLOW__CORE__LOAD_EXAMPLES", "False"),
            ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True"),
            ("AIRFLOW__CORE__TEST_CONNECTION", "Enabled"),
        ],
    )
    def test_sets_the_option(self, layout: RunLayout, variable: str, expected: str) -> None:
        assert airflow_environment(layout, 8123)[variable] == expected

    def test_points_home_database_dags_and_logs_into_the_layout(self, layout: RunLayout) -> None:
        env = airflow_environment(layout, 8123)
        assert env["AIRFLOW_HOME"] == str(layout.home)
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{layout.home / 'airflow.db'}"
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(layout.dags_folder)
        assert env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] == str(layout.logs_folder / "tasks")
        assert env["AIRFLOW__MODELBIT__CALLBACK_STORE"] == str(layout.callback_store)

    def test_generates_fresh_secrets_for_each_run(self, layout: RunLayout) -> None:
        """Two runs never share a JWT secret or Fernet key (one run shares them across its services)."""
        first, second = airflow_environment(layout, 1), airflow_environment(layout, 1)
        for variable in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
            assert first[variable] != second[variable]

    def test_ignores_airflow_options_of_the_calling_shell(
        self, layout: RunLayout, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "999")
        monkeypatch.setenv("AIRFLOW__WEBSERVER__STRAY", "x")
        monkeypatch.setenv("AIRFLOW_CONN_STRAY", "http://elsewhere")
        env = airflow_environment(layout, 1)
        assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
        assert "AIRFLOW__WEBSERVER__STRAY" not in env
        assert "AIRFLOW_CONN_STRAY" not in env

    def test_overrides_win_over_harness_defaults(self, layout: RunLayout) -> None:
        env = airflow_environment(
            layout, 1, {"AIRFLOW__CORE__PARALLELISM": "2", "AIRFLOW_CONN_X": "http://h"}
        )
        assert env["AIRFLOW__CORE__PARALLELISM"] == "2"
        assert env["AIRFLOW_CONN_X"] == "http://h"


class TestFreePort:
    def test_returns_a_port_that_can_be_bound_on_loopback(self) -> None:
        port = free_port()
        with socket.socket() as server:
            server.bind((LOOPBACK, port))
        assert 1024 < port < 65536


def wait_until_group_gone(pgid: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not group_alive(pgid)


class TestStartUpFailures:
    """Start-up problems are reported with what to fix, and leave no process behind."""

    def test_rejects_a_missing_dags_folder(self, tmp_path: Path) -> None:
        with pytest.raises(AirflowServicesError, match=r"DAGs folder .*does-not-exist does not exist"):
            AirflowServices(dags_folder=tmp_path / "does-not-exist").start()

    def test_rejects_an_unknown_service_name_before_starting_anything(self, tmp_path: Path) -> None:
        services = AirflowServices(dags_folder=tmp_path, home=tmp_path / "home", services=("webserver",))
        with pytest.raises(AirflowServicesError, match="Unknown service 'webserver'; choose from api-server"):
            services.start()
        assert not (tmp_path / "home").exists()

    @pytest.mark.parametrize("action", ["kill_service", "stop_service"])
    def test_killing_or_stopping_a_service_that_is_not_running_names_the_running_ones(
        self, tmp_path: Path, action: str
    ) -> None:
        with pytest.raises(AirflowServicesError, match=r"Airflow triggerer is not running \(running: none\)"):
            getattr(AirflowServices(dags_folder=tmp_path), action)("triggerer")


class TestCommandLine:
    def test_up_requires_a_dags_folder(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["up"])
        assert "--dags-folder" in capsys.readouterr().err

    def test_up_collects_repeated_env_options(self) -> None:
        arguments = build_parser().parse_args(["up", "--dags-folder", "d", "--env", "A=1", "--env", "B=x=y"])
        assert arguments.env == ["A=1", "B=x=y"]


def listening_addresses(pids: set[int]) -> set[str]:
    """Hex local addresses (as /proc/net/tcp* writes them) of the TCP sockets ``pids`` listen on."""
    links = (_readlink(f"/proc/{pid}/fd/{fd}") for pid in pids for fd in _fds(pid))
    inodes = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    addresses: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            columns = row.split()
            local, state, inode = columns[1], columns[3], columns[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                addresses.add(local.rsplit(":", 1)[0])
    return addresses


def _fds(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def group_members(pgids: set[int]) -> set[int]:
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) in pgids:
                    members.add(int(entry))
            except ProcessLookupError:
                continue
    return members


@pytest.mark.services
class TestRunningServices:
    """With the real services up: healthy, loopback only, provider and plugin loaded."""

    def test_every_component_reports_healthy(self, airflow_services: AirflowServices) -> None:
        health = httpx.get(f"{airflow_services.api_url}/api/v2/monitor/health", timeout=30).json()
        for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
            assert health[component]["status"] == "healthy", health

    def test_serves_the_ui_on_loopback(self, airflow_services: AirflowServices) -> None:
        response = httpx.get(f"{airflow_services.api_url}/", timeout=30, follow_redirects=True)
        assert response.status_code == 200
        assert "<html" in response.text.lower()

    def test_no_service_listens_beyond_loopback(self, airflow_services: AirflowServices) -> None:
        pgids = {service.process.pid for service in airflow_services._running}
        addresses = listening_addresses(group_members(pgids))
        # /proc/net/tcp writes 127.0.0.1 as 0100007F; ::ffff:127.0.0.1 ends in the same word.
        assert addresses, "expected at least the api-server socket"
        assert all(address.endswith("0100007F") for address in addresses), addresses

    def test_the_provider_is_registered(self, airflow_services: AirflowServices) -> None:
        listing = airflow_services.run_cli("providers", "list", "--output", "json").stdout
        assert f'"package_name": "{PROVIDER_DISTRIBUTION}"' in listing

    def test_the_modelbit_plugin_is_loaded(self, airflow_services: AirflowServices) -> None:
        client = airflow_services.rest_client()
        plugin = next(p for p in client.plugins() if p["name"] == "modelbit")
        assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/modelbit"]

    def test_the_callback_receiver_answers_under_modelbit(self, airflow_services: AirflowServices) -> None:
        response = httpx.get(f"{airflow_services.api_url}/modelbit/v1/health", timeout=30)
        assert response.status_code == 200

    def test_cli_calls_share_the_services_database(self, airflow_services: AirflowServices) -> None:
        airflow_services.run_cli("variables", "set", "harness_probe", "42")
        variable = airflow_services.rest_client().request("GET", "/variables/harness_probe", what="read")
        assert variable.json()["value"] == "42"

    def test_service_output_goes_to_one_log_per_service(self, airflow_services: AirflowServices) -> None:
        for name in ("api-server", "scheduler", "triggerer", "dag-processor"):
            assert airflow_services.service_log(name).stat().st_size > 0


@pytest.mark.services
class TestLifecycle:
    """A run cleans up after itself: processes stopped, temporary home removed."""

    def test_stop_ends_every_process_and_removes_the_temporary_home(self, database_cache: Path) -> None:
        services = AirflowServices(
            dags_folder=Path(__file__).parent / "dags",
            services=("api-server",),
            database_cache=database_cache,
        )
        with services:
            home = services.layout.home
            pgid = services._running[0].process.pid
            assert httpx.get(f"{services.api_url}/api/v2/monitor/health", timeout=30).status_code == 200
        assert wait_until_group_gone(pgid)
        assert not home.exists()
