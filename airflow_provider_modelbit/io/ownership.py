"""One writer per output: an owner record with a lease, kept in the output's checkpoint folder.

A run that writes an output first creates ``owner.json`` in ``<output>.checkpoint/`` with a
conditional create (local disk: a hard link, which fails if the name exists; object stores:
fsspec's exclusive ``"xb"`` mode where the store supports it). The record names the task try
(DAG, task, run, map index, try number) and holds a lease that a background thread renews while
the run works. A second writer of the same output finds the record and either waits (bounded)
for it to go away or fails at once with :class:`ModelbitOutputBusy` naming the other run. A
retry of the same task instance takes over a lease that expired, that its own try holds, or
whose process on this machine is gone (a killed worker).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from airflow_provider_modelbit.exceptions import ModelbitOutputBusy
from airflow_provider_modelbit.io.atomic import create_exclusively, is_local

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

OWNER_NAME = "owner.json"
OWNER_SCHEMA_VERSION = 1
#: Seconds a lease stays valid without renewal; renewed every third of it while the run works.
DEFAULT_LEASE_SECONDS = 60.0
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class TaskIdentity:
    """
    The task try that writes an output; ``None`` fields when run outside Airflow (tests, scripts).

    :param dag_id: the DAG.
    :param task_id: the task.
    :param run_id: the DAG run.
    :param map_index: the mapped task index, -1 when not mapped.
    :param try_number: the try, from 1.
    """

    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    map_index: int = -1
    try_number: int | None = None

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> TaskIdentity:
        ti = context.get("ti")
        if ti is None:
            return cls()
        map_index = getattr(ti, "map_index", -1)
        return cls(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            map_index=-1 if map_index is None else int(map_index),
            try_number=getattr(ti, "try_number", None),
        )

    def same_task_instance(self, other: TaskIdentity) -> bool:
        """Tell whether both are tries of one task instance (the try number aside)."""
        return replace(self, try_number=None) == replace(other, try_number=None)

    def describe(self) -> str:
        if self.dag_id is None:
            return "a run outside Airflow"
        mapped = f", map index {self.map_index}" if self.map_index >= 0 else ""
        return f"DAG {self.dag_id!r} task {self.task_id!r} run {self.run_id!r}{mapped}, try {self.try_number}"


@dataclass(frozen=True)
class OwnerRecord:
    """
    Who writes an output now, and until when the claim holds without renewal.

    :param task: the task try writing the output.
    :param token: unique per claim, so a writer can tell its own record from a successor's.
    :param host: the machine the writer runs on.
    :param pid: its process id there.
    :param lease_until: wall-clock time (``time.time()``) the lease runs out unless renewed;
        wall clock because writers on different machines compare it.
    """

    task: TaskIdentity
    token: str
    host: str
    pid: int
    lease_until: float
    schema_version: int = OWNER_SCHEMA_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> OwnerRecord | None:
        """Read a record; ``None`` when it is unreadable or of another schema version."""
        try:
            values = json.loads(raw)
            if values.get("schema_version") != OWNER_SCHEMA_VERSION:
                return None
            return cls(**{**values, "task": TaskIdentity(**values["task"])})
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def expired(self, now: float) -> bool:
        return now >= self.lease_until

    def process_gone(self) -> bool:
        """Tell whether the writer was on this machine and its process no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


class OutputLease:
    """
    The claim of one task try on one output, held from :meth:`acquire` to :meth:`release`.

    :param folder: the output's checkpoint folder, where ``owner.json`` lives.
    :param task: the task try claiming the output.
    :param output: the output, for messages.
    :param wait_seconds: how long to wait for another run's live lease before failing.
    :param lease_seconds: lease length; renewed every third of it.
    """

    def __init__(
        self,
        folder: ObjectStoragePath,
        task: TaskIdentity,
        *,
        output: str,
        wait_seconds: float = 0.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.folder = folder
        self.path = folder / OWNER_NAME
        self.task = task
        self.output = output
        self.wait_seconds = wait_seconds
        self.lease_seconds = lease_seconds
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._lost: OwnerRecord | None = None
        self._renewer: threading.Thread | None = None

    # -- claiming --------------------------------------------------------------------------------

    def acquire(self) -> None:
        """
        Claim the output, waiting as allowed; then keep the lease renewed until :meth:`release`.

        :raises ModelbitOutputBusy: another run holds a live lease and did not let go in time.
        """
        started = time.monotonic()
        logged = False
        while not self._create_exclusively():
            holder = self._read()
            if holder is None:
                continue  # the other run let go between our create and our read: create again
            if self._may_take_over(holder):
                self._take_over(holder)
                break
            # An earlier try of this task instance may still hold a lease it can no longer renew.
            same_instance = holder.task.same_task_instance(self.task)
            limit = self.wait_seconds + (2 * self.lease_seconds if same_instance else 0)
            if time.monotonic() - started >= limit:
                raise self._busy(holder)
            if not logged:
                log.info("Waiting for %s to finish writing %s.", holder.task.describe(), self.output)
                logged = True
            time.sleep(_POLL_SECONDS)
        self._start_renewing()

    def _may_take_over(self, holder: OwnerRecord) -> bool:
        if holder.token == self._token:
            return True
        if holder.process_gone() or holder.expired(time.time()):
            return True
        return holder.task == self.task  # this very try, started again in a new process

    def _take_over(self, holder: OwnerRecord | None) -> None:
        if holder is not None:
            log.warning(
                "Taking over %s from %s: its lease expired or its process is gone.",
                self.output,
                holder.task.describe(),
            )
        self._write(self._record())

    def _busy(self, holder: OwnerRecord) -> ModelbitOutputBusy:
        waited = f" after waiting {self.wait_seconds:.0f} s" if self.wait_seconds > 0 else ""
        return ModelbitOutputBusy(
            f"output_path {self.output} is being written by {holder.task.describe()} on {holder.host} "
            f"(lease until {time.strftime('%H:%M:%S', time.gmtime(holder.lease_until))} UTC){waited}. "
            "Two runs must not write one output: give each run its own output_path (e.g. with "
            "{{ ds }}), limit max_active_runs, or raise output_wait_seconds to wait for the other run."
        )

    def _record(self) -> OwnerRecord:
        return OwnerRecord(
            task=self.task,
            token=self._token,
            host=socket.gethostname(),
            pid=os.getpid(),
            lease_until=time.time() + self.lease_seconds,
        )

    # -- holding ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`ModelbitOutputBusy` if the renewals found another writer holding the output."""
        if self._lost is not None:
            raise ModelbitOutputBusy(
                f"output_path {self.output} was taken over by {self._lost.task.describe()} while this "
                "run was writing it; this run stops without touching the output."
            )

    def confirm(self) -> None:
        """Read the owner record and raise :class:`ModelbitOutputBusy` unless this run still holds it."""
        holder = self._read()
        if holder is None or holder.token != self._token:
            self._lost = self._lost or holder or _UNREADABLE
        self.check()

    def release(self) -> None:
        """Stop renewing and remove the owner record if it is still this run's."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        holder = self._read()
        if holder is not None and holder.token == self._token:
            self.path.fs.rm_file(self.path.path)

    def _start_renewing(self) -> None:
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="modelbit-lease", daemon=True)
        self._renewer.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                holder = self._read()
                if holder is not None and holder.token != self._token:
                    self._lost = holder
                    return
                self._write(self._record())
            except OSError as error:  # a store hiccup: the next renewal tries again
                log.warning("Could not renew the lease on %s: %s", self.output, error)

    # -- storage ---------------------------------------------------------------------------------

    def _create_exclusively(self) -> bool:
        """Create the owner record only if none exists; tell whether this call created it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        local = is_local(self.path)
        if not create_exclusively(self.path.fs, self.path.path, self._record().to_json(), local=local):
            return False
        if local:
            return True
        # A store without conditional creates only checked before writing: read the record back.
        holder = self._read()
        return holder is not None and holder.token == self._token

    def _read(self) -> OwnerRecord | None:
        """Read the owner record; ``None`` when there is none, an expired one when it is unreadable."""
        try:
            with self.path.fs.open(self.path.path, "rb") as stream:
                raw = stream.read()
        except FileNotFoundError:
            return None
        return OwnerRecord.from_json(raw) or _UNREADABLE

    def _write(self, record: OwnerRecord) -> None:
        self._write_raw(record.to_json())

    def _write_raw(self, raw: bytes) -> None:
        if is_local(self.path):
            temporary = f"{self.path.path}.{uuid.uuid4().hex}"
            with open(temporary, "wb") as stream:
                stream.write(raw)
            os.replace(temporary, self.path.path)
            return
        with self.path.fs.open(self.path.path, "wb") as stream:
            stream.write(raw)


#: Stands for an owner record that cannot be read: expired, so a writer may take over.
_UNREADABLE = OwnerRecord(TaskIdentity(), token="", host="", pid=0, lease_until=0)
