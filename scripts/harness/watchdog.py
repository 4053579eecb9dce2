"""The watchdog of ``processes.Watchdog``: stop the registered process groups once the script is gone.

Run as ``python watchdog.py <grace seconds>`` in a session of its own, with a pipe from the script
on stdin carrying ``+<pgid>`` (watch) and ``-<pgid>`` (forget) lines. End of input means the
script has exited, cleanly or not (the kernel closes the pipe even after SIGKILL): every group
still registered gets SIGTERM, and SIGKILL after the grace period. Standard library only, so that
it starts fast and cannot fail on an import.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time


def group_alive(pgid: int) -> bool:
    """
    Whether a process of group ``pgid`` still runs.

    Zombies do not count: an exited process whose parent died stays a zombie for good where the
    init process does not reap (some containers), and it holds no resources.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    return any(group == pgid and state != "Z" for group, state in _process_groups_and_states())


def _process_groups_and_states() -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            found.append((int(fields[2]), fields[0].decode()))
    return found


def send(pgids: set[int], signum: signal.Signals) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def read_registrations() -> set[int]:
    """Follow the script's registrations until the pipe closes; the groups still registered then."""
    pgids: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if len(line) > 1 and line[1:].isdigit():
            pgid = int(line[1:])
            if line[:1] == b"+":
                pgids.add(pgid)
            elif line[:1] == b"-":
                pgids.discard(pgid)
    return pgids


def main() -> None:
    grace = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    # Only the pipe ends the watch; a terminal's Ctrl-C or a stray SIGTERM must not.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    pgids = {pgid for pgid in read_registrations() if group_alive(pgid)}
    if not pgids:
        return
    send(pgids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(group_alive(pgid) for pgid in pgids):
        time.sleep(0.1)
    send({pgid for pgid in pgids if group_alive(pgid)}, signal.SIGKILL)


if __name__ == "__main__":
    main()
