"""Start commands in process groups of their own, and make sure none outlives the run that started it.

Every command leads a process group of its own (``start_new_session``), so stopping it stops what
it forked too (the scheduler's workers, a task's runner), and a terminal's Ctrl-C, which the
kernel sends to the foreground group, reaches the script alone: the script decides the order.

A :class:`ProcessSupervisor` owns the groups of one run and stops them all at once (SIGTERM, then
SIGKILL after a grace period). Two guards cover a script that dies without cleaning up
(``kill -9``, the OOM killer), since then no Python code of it runs:

- each group leader asks the kernel for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``,
  :func:`dying_with_parent`);
- a watchdog process (``watchdog.py``), in a session of its own, is told every group as it starts
  and kills the groups still alive when its pipe from the script closes, which the kernel does
  however the script ends. It reaches what the leader forked, which the first guard cannot.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from harness.watchdog import group_alive

#: Seconds a group gets between SIGTERM and SIGKILL; all groups share them, so a stop takes this long at most.
STOP_GRACE_SECONDS = 4.0
#: Seconds a server gets to write its ready file; generous, for a busy machine.
READY_TIMEOUT_SECONDS = 120.0
WATCHDOG = Path(__file__).with_name("watchdog.py")
_POLL_SECONDS = 0.05
_REAP_SECONDS = 5.0


class ProcessError(RuntimeError):
    """A started command failed or was not ready in time; the message names it and its log file."""


# Run in the child in place of the command: ask the kernel for SIGKILL when the parent dies, check the
# parent did not die already, then become the command (the request survives exec). A fresh interpreter
# rather than a preexec_fn, which may deadlock when the parent has threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL); "
    "os.getppid() == int(sys.argv[1]) or os.kill(os.getpid(), signal.SIGKILL); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def dying_with_parent(command: Sequence[str]) -> list[str]:
    """
    ``command`` made to receive SIGKILL from the kernel when the process starting it dies (Linux).

    Only for commands started on the main thread: the kernel ties the signal to the thread that
    starts the child, so a command started from a worker thread would die with that thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


@dataclass
class ProcessGroup:
    """
    A started command, leader of its own process group, with its output in a log file.

    :param name: what the command is, for messages (``"callback receiver"``, ``"scheduler"``).
    :param process: the leader.
    :param log_file: where its stdout and stderr go.
    :param leftovers: files the command leaves behind even when it stops cleanly; removed once
        the group is stopped.
    """

    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    leftovers: tuple[Path, ...] = ()

    @property
    def pgid(self) -> int:
        return self.process.pid

    def exited(self) -> bool:
        return self.process.poll() is not None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output yet)"

    def wait_for_ready_file(self, ready_file: Path, timeout: float = READY_TIMEOUT_SECONDS) -> str:
        """The first line the command wrote to ``ready_file`` (a URL); fails, naming the log, if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready_file.exists() and (text := ready_file.read_text().strip()):
                return text.splitlines()[0]
            if self.exited():
                raise ProcessError(
                    f"The {self.name} exited with code {self.process.returncode} before it was ready; "
                    f"its log {self.log_file} ends with:\n{self.log_tail()}"
                )
            time.sleep(_POLL_SECONDS)
        raise ProcessError(f"The {self.name} was not ready after {timeout:.0f} s; see {self.log_file}")


def stop_groups(groups: Sequence[ProcessGroup], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every group at once, SIGKILL the groups still alive after ``grace`` seconds."""
    running = [group for group in groups if group_alive(group.pgid)]
    for group in running:
        signal_group(group.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(group_alive(group.pgid) for group in running) and time.monotonic() < deadline:
        _reap(running)
        time.sleep(_POLL_SECONDS)
    for group in running:
        if group_alive(group.pgid):
            signal_group(group.pgid, signal.SIGKILL)
    for group in groups:
        # After SIGKILL the leader exits at once; the wait only collects its status.
        with contextlib.suppress(subprocess.TimeoutExpired):
            group.process.wait(timeout=max(grace, _REAP_SECONDS))
        for leftover in group.leftovers:
            leftover.unlink(missing_ok=True)


def _reap(groups: Sequence[ProcessGroup]) -> None:
    # Collect the status of leaders that have exited, so they do not linger as zombies.
    for group in groups:
        group.process.poll()


class Watchdog:
    """
    A process in a session of its own that kills the groups it was told about once this process is gone.

    It reads ``+<pgid>`` and ``-<pgid>`` lines from a pipe; the pipe closes when this process exits
    for any reason, SIGKILL included, and the watchdog then stops the groups still registered.
    """

    def __init__(self, grace: float = STOP_GRACE_SECONDS) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(WATCHDOG), str(grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self, timeout: float = 10.0) -> None:
        """Close the pipe (the watchdog then stops whatever is still registered, and exits)."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=timeout)

    def _send(self, line: str) -> None:
        if self._process.stdin is not None:
            # A watchdog that died cannot be helped; the parent-death signal still guards the leaders.
            with contextlib.suppress(OSError):
                self._process.stdin.write(f"{line}\n".encode())
                self._process.stdin.flush()


@dataclass
class ProcessSupervisor:
    """
    Starts the commands of one run and stops them all: on :meth:`stop_all`, on exit, and on interrupt.

    :param cwd: working folder of the commands.
    :param grace: seconds between SIGTERM and SIGKILL when stopping.
    """

    cwd: Path | None = None
    grace: float = STOP_GRACE_SECONDS
    _groups: list[ProcessGroup] = field(default_factory=list, init=False, repr=False)
    _watchdog: Watchdog | None = field(default=None, init=False, repr=False)
    _starting: bool = field(default=False, init=False, repr=False)
    _interrupt_pending: bool = field(default=False, init=False, repr=False)

    def __enter__(self) -> ProcessSupervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        log_file: Path,
        leftovers: tuple[Path, ...] = (),
    ) -> ProcessGroup:
        """
        Start ``command`` as the leader of a new process group, output appended to ``log_file``.

        :param leftovers: files the command leaves behind, removed when the group is stopped.
        """
        watchdog = self._ensure_watchdog()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            # An interrupt waits until the new group is known, so that it is stopped with the others.
            self._starting = True
            try:
                process = subprocess.Popen(
                    dying_with_parent(command),
                    env=dict(env),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=self.cwd,
                )
                watchdog.watch(process.pid)
                group = ProcessGroup(name=name, process=process, log_file=log_file, leftovers=leftovers)
                self._groups.append(group)
            finally:
                self._starting = False
                if self._interrupt_pending:
                    self._interrupt_pending = False
                    self.interrupt()
        return group

    def run(
        self, name: str, command: Sequence[str], env: Mapping[str, str], log_file: Path, timeout: float
    ) -> int:
        """Run ``command`` to its end in a group of its own; its exit code, -1 if stopped at ``timeout``."""
        group = self.start(name, command, env, log_file)
        try:
            return group.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1
        finally:
            self.stop(group)

    def stop(self, *groups: ProcessGroup, grace: float | None = None) -> None:
        """Stop these groups (all at once) and forget them; ``grace`` overrides the supervisor's."""
        stop_groups(groups, self.grace if grace is None else grace)
        for group in groups:
            if group in self._groups:
                self._groups.remove(group)
                if self._watchdog is not None:
                    self._watchdog.forget(group.pgid)

    def terminate_all(self) -> None:
        """SIGTERM every group without waiting: what an interrupt does first (safe in a signal handler)."""
        for group in list(self._groups):
            signal_group(group.pgid, signal.SIGTERM)

    def interrupt(self) -> None:
        """
        SIGTERM every group and raise ``KeyboardInterrupt``; called from a signal handler.

        While a group is being started the interrupt waits until the group is registered.
        """
        if self._starting:
            self._interrupt_pending = True
            return
        self.terminate_all()
        raise KeyboardInterrupt

    def stop_all(self) -> None:
        self.stop(*self._groups)

    def forget(self, group: ProcessGroup) -> None:
        """Stop watching a group that has ended (e.g. one killed on purpose)."""
        self.stop(group, grace=0)

    def close(self) -> None:
        """Stop every group still running, then let the watchdog go."""
        self.stop_all()
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None

    def _ensure_watchdog(self) -> Watchdog:
        if self._watchdog is None:
            self._watchdog = Watchdog(self.grace)
        return self._watchdog


@contextlib.contextmanager
def interrupts_stop(supervisor: ProcessSupervisor | None = None) -> Iterator[None]:
    """
    Turn the first SIGINT or SIGTERM into ``KeyboardInterrupt`` and ignore the ones after it.

    The handler first sends SIGTERM to every group of ``supervisor``, so they all stop while the
    clean-up unwinds (in the time of the slowest, not of their sum); later signals (a second Ctrl-C,
    a SIGTERM after the SIGINT) are ignored so that they cannot cut the clean-up short.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if supervisor is not None:
            supervisor.interrupt()
            return
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = [
    "READY_TIMEOUT_SECONDS",
    "STOP_GRACE_SECONDS",
    "ProcessError",
    "ProcessGroup",
    "ProcessSupervisor",
    "Watchdog",
    "dying_with_parent",
    "group_alive",
    "interrupts_stop",
    "signal_group",
    "stop_groups",
]
