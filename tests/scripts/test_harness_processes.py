"""The harness's process groups (scripts/harness/processes.py): stopped together, on interrupt, after kill -9.

Every wait here is on a condition with a timeout sized for a busy two-core machine; a process a
test starts is stopped by the test or by the code under test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.processes import (
    ProcessError,
    ProcessGroup,
    ProcessSupervisor,
    interrupts_stop,
    stop_groups,
)
from harness.watchdog import group_alive

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
#: Seconds to wait for a condition: far above what an idle machine needs, for a busy one.
PATIENCE = 60.0
SLEEPER = "import time; time.sleep(600)"
# Ignores SIGTERM, says it is up, sleeps.
DEAF = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(600)"
)
# A command that forks a child into its group, then sleeps: the child is what the leader's
# parent-death signal cannot reach, and what stopping the group must reach.
FORKER = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print(child.pid, flush=True); time.sleep(600)"
)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.05)


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def first_line(path: Path) -> str:
    wait_for(lambda: path.exists() and path.read_text().strip() != "", f"a line in {path}")
    return path.read_text().split()[0]


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[ProcessSupervisor]:
    with ProcessSupervisor(cwd=tmp_path, grace=2.0) as supervisor:
        yield supervisor


class TestStopGroups:
    """Stopping a group ends what the leader forked, and a group deaf to SIGTERM is killed."""

    def test_stopping_ends_the_children_of_the_leader(
        self, supervisor: ProcessSupervisor, tmp_path: Path
    ) -> None:
        group = supervisor.start("forker", python(FORKER), os.environ, tmp_path / "forker.log")
        child = int(first_line(group.log_file))
        supervisor.stop(group)
        assert group.process.returncode == -signal.SIGTERM
        wait_for(lambda: not running(child), "the forked child ends")
        assert not group_alive(group.pgid)

    def test_a_group_ignoring_sigterm_is_killed_after_the_grace_period(
        self, supervisor: ProcessSupervisor, tmp_path: Path
    ) -> None:
        group = supervisor.start("deaf", python(DEAF), os.environ, tmp_path / "deaf.log")
        first_line(group.log_file)
        started = time.monotonic()
        stop_groups([group], grace=1.0)
        assert group.process.returncode == -signal.SIGKILL
        assert time.monotonic() - started >= 0.9

    def test_groups_stop_together_not_one_after_another(
        self, supervisor: ProcessSupervisor, tmp_path: Path
    ) -> None:
        groups = [
            supervisor.start(f"deaf {n}", python(DEAF), os.environ, tmp_path / f"deaf-{n}.log")
            for n in range(3)
        ]
        for group in groups:
            first_line(group.log_file)
        started = time.monotonic()
        stop_groups(groups, grace=2.0)
        # One grace period for all three (plus slack for a busy machine), not three.
        assert time.monotonic() - started < 2.0 * 3
        assert all(group.process.returncode == -signal.SIGKILL for group in groups)

    def test_an_exited_group_is_left_alone(self, supervisor: ProcessSupervisor, tmp_path: Path) -> None:
        group = supervisor.start("done", [sys.executable, "-c", "pass"], os.environ, tmp_path / "done.log")
        group.process.wait(timeout=PATIENCE)
        stop_groups([group], grace=1.0)
        assert group.process.returncode == 0

    def test_the_files_a_command_leaves_behind_go_with_it(
        self, supervisor: ProcessSupervisor, tmp_path: Path
    ) -> None:
        """As SeaweedFS leaves its Unix sockets in /tmp: made by the command, removed by the stop."""
        socket_file = tmp_path / "server.sock"
        command = python(
            f"import time; open({str(socket_file)!r}, 'w').close(); print('up', flush=True); time.sleep(300)"
        )
        group = supervisor.start(
            "leaver", command, os.environ, tmp_path / "leaver.log", leftovers=(socket_file,)
        )
        first_line(group.log_file)
        assert socket_file.exists()
        supervisor.stop(group)
        assert not socket_file.exists()


class TestSupervisor:
    def test_run_returns_the_exit_code_and_keeps_the_output(
        self, supervisor: ProcessSupervisor, tmp_path: Path
    ) -> None:
        command = [sys.executable, "-c", "print('hello'); raise SystemExit(3)"]
        assert supervisor.run("probe", command, os.environ, tmp_path / "probe.log", timeout=PATIENCE) == 3
        assert (tmp_path / "probe.log").read_text().strip() == "hello"

    def test_run_stops_a_command_that_outlives_its_timeout(
        self, supervisor: ProcessSupervisor, tmp_path: Path
    ) -> None:
        command = python(SLEEPER)
        assert supervisor.run("sleeper", command, os.environ, tmp_path / "sleeper.log", timeout=1.0) == -1

    def test_closing_stops_every_group_still_running(self, tmp_path: Path) -> None:
        with ProcessSupervisor(grace=2.0) as supervisor:
            groups = [
                supervisor.start(f"s{n}", python(SLEEPER), os.environ, tmp_path / f"s{n}.log")
                for n in range(2)
            ]
        assert all(group.exited() for group in groups)
        assert not any(group_alive(group.pgid) for group in groups)

    def test_a_server_that_exits_before_it_is_ready_is_reported_with_its_log(
        self, supervisor: ProcessSupervisor, tmp_path: Path
    ) -> None:
        command = [sys.executable, "-c", "import sys; sys.exit('port in use')"]
        group = supervisor.start("local server", command, os.environ, tmp_path / "server.log")
        with pytest.raises(
            ProcessError, match=r"local server exited with code 1.*server\.log[\s\S]*port in use"
        ):
            group.wait_for_ready_file(tmp_path / "never.url")

    def test_the_ready_file_gives_the_url(self, supervisor: ProcessSupervisor, tmp_path: Path) -> None:
        ready = tmp_path / "ready.url"
        command = [
            sys.executable,
            "-c",
            f"open({str(ready)!r}, 'w').write('http://127.0.0.1:1\\n'); {SLEEPER}",
        ]
        group = supervisor.start("server", command, os.environ, tmp_path / "server.log")
        assert group.wait_for_ready_file(ready) == "http://127.0.0.1:1"


# A script starting one group through a supervisor, then waiting to be killed. Its output: its own
# pid, the group's pid, the pid the group's leader forked, and the watchdog's pid.
DOOMED_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from harness.processes import ProcessSupervisor

    log = Path(sys.argv[1])
    supervisor = ProcessSupervisor(grace=2.0)
    group = supervisor.start("forker", [sys.executable, "-c", sys.argv[2]], os.environ, log)
    while not log.read_text().strip():
        time.sleep(0.05)
    print(os.getpid(), group.pgid, log.read_text().split()[0], supervisor._watchdog.pid, flush=True)
    time.sleep(600)
    """
)


class TestWhenTheScriptIsKilled:
    def test_sigkill_of_the_script_leaves_none_of_its_processes(self, tmp_path: Path) -> None:
        """The leader dies with its parent; the watchdog ends what the leader forked, then itself."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")])}
        script = subprocess.Popen(
            [sys.executable, "-c", DOOMED_SCRIPT, str(tmp_path / "forker.log"), FORKER],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert script.stdout is not None
            line = script.stdout.readline()
            assert line, "the script printed nothing"
            _, leader, child, watchdog = (int(word) for word in line.split())
            assert all(running(pid) for pid in (leader, child, watchdog))
            script.kill()
            script.wait(timeout=PATIENCE)
            wait_for(lambda: not any(running(pid) for pid in (leader, child, watchdog)), "every process ends")
        finally:
            if script.poll() is None:
                script.kill()
                script.wait(timeout=PATIENCE)


class TestInterrupts:
    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
    def test_the_first_signal_interrupts_and_terminates_every_group(
        self, supervisor: ProcessSupervisor, tmp_path: Path, signum: signal.Signals
    ) -> None:
        group = supervisor.start("sleeper", python(SLEEPER), os.environ, tmp_path / "s.log")
        with pytest.raises(KeyboardInterrupt), interrupts_stop(supervisor):
            os.kill(os.getpid(), signum)
            time.sleep(PATIENCE)  # the handler interrupts this
        group.process.wait(timeout=PATIENCE)
        assert group.process.returncode == -signal.SIGTERM

    def test_later_signals_are_ignored_during_the_clean_up(self) -> None:
        cleaned_up = False
        with pytest.raises(KeyboardInterrupt), interrupts_stop():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(PATIENCE)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # would end pytest if it were not ignored
                os.kill(os.getpid(), signal.SIGINT)
                cleaned_up = True
        assert cleaned_up

    def test_the_previous_handlers_come_back(self) -> None:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        with interrupts_stop():
            pass
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_group_is_a_process_group_of_its_own(supervisor: ProcessSupervisor, tmp_path: Path) -> None:
    group: ProcessGroup = supervisor.start("s", python(SLEEPER), os.environ, tmp_path / "s.log")
    assert os.getpgid(group.process.pid) == group.pgid != os.getpgid(0)
