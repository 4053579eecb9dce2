"""
Fault injection: the failures a real network and platform produce, on demand and repeatably.

Settings apply globally or to one deployment (a deployment's own settings replace the global
ones for its requests). Every decision draws from a ``random.Random`` seeded with ``seed``, so a
sequence of requests meets the same faults on every run. Every injected fault is recorded.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FAULT_LOG_SIZE = 100_000
INJECTABLE_STATUSES = (500, 502, 503)

GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class FaultSettings:
    """
    What to inject, as rates in [0, 1] per request unless stated.

    :param error_rate: answer with one of ``error_statuses`` before the model runs.
    :param error_statuses: statuses to choose from: 500, 502 (an HTML gateway page) and 503.
    :param rate_429: answer 429 with ``Retry-After: retry_after`` before the model runs.
    :param retry_after: seconds announced in injected 429 answers.
    :param drop_before_rate: close the connection without an answer before the model runs.
    :param drop_after_rate: run the model, then close the connection without an answer.
    :param latency_seconds: extra seconds before every answer, before the request is admitted by
        the in-flight and per-minute limits (a slow network, not a slow model).
    :param model_seconds: seconds the model takes per request, its own compute included, while
        the request holds its place among the requests in flight.
    :param model_seconds_per_row: seconds the model takes per batch row, on top of ``model_seconds``.
    :param truncate_link_rate: cut a link download short after announcing its full length.
    :param truncate_link_first: cut the first N downloads of every link short (then serve it whole),
        as a flaky network does to a link a client fetches again.
    :param webhook_duplicate_rate: deliver a webhook a second time after it was delivered.
    :param webhook_delay_seconds: wait this long before the first webhook attempt.
    :param webhook_reorder: hold each delivery until the next one is ready and send the newer first.
    :param seed: seed of the random decisions.
    """

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (503,)
    rate_429: float = 0.0
    retry_after: int = 1
    drop_before_rate: float = 0.0
    drop_after_rate: float = 0.0
    latency_seconds: float = 0.0
    model_seconds: float = 0.0
    model_seconds_per_row: float = 0.0
    truncate_link_rate: float = 0.0
    truncate_link_first: int = 0
    webhook_duplicate_rate: float = 0.0
    webhook_delay_seconds: float = 0.0
    webhook_reorder: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "error_rate",
            "rate_429",
            "drop_before_rate",
            "drop_after_rate",
            "truncate_link_rate",
            "webhook_duplicate_rate",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"Fault rate {name} must be between 0 and 1, got {value!r}.")
        if not isinstance(self.truncate_link_first, int) or self.truncate_link_first < 0:
            first = self.truncate_link_first
            raise ValueError(f"truncate_link_first must be a whole number >= 0, got {first!r}.")
        bad = [status for status in self.error_statuses if status not in INJECTABLE_STATUSES]
        if bad or not self.error_statuses:
            raise ValueError(
                f"error_statuses must be a non-empty subset of {INJECTABLE_STATUSES}, got {bad}."
            )

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> FaultSettings:
        known = {option.name for option in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown fault setting(s) {unknown}; known settings: {sorted(known)}.")
        cleaned = dict(values)
        if "error_statuses" in cleaned:
            cleaned["error_statuses"] = tuple(cleaned["error_statuses"])
        return cls(**cleaned)


class FaultPlan:
    """
    One set of settings and its seeded random source.

    :param settings: what to inject.
    """

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._random = random.Random(settings.seed)
        self._link_downloads: Counter[str] = Counter()

    def model_time(self, rows: int) -> float:
        """Seconds the model takes on a request of ``rows`` batch rows (1 for a single input)."""
        return self.settings.model_seconds + self.settings.model_seconds_per_row * max(rows, 1)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate

    def cuts_link(self, path: str) -> bool:
        """Tell whether this download of the link at ``path`` is cut short (random or among its first N)."""
        self._link_downloads[path] += 1
        if self._link_downloads[path] <= self.settings.truncate_link_first:
            return True
        return self.roll(self.settings.truncate_link_rate)

    def error_status(self) -> int:
        return self._random.choice(self.settings.error_statuses)


class FaultInjector:
    """Global and per-deployment fault plans, and the log of injected faults."""

    def __init__(self) -> None:
        self._global: FaultPlan | None = None
        self._per_deployment: dict[str, FaultPlan] = {}
        self._log: deque[dict[str, Any]] = deque(maxlen=FAULT_LOG_SIZE)
        self._counts: Counter[str] = Counter()

    def set(self, settings: FaultSettings, deployment: str | None = None) -> None:
        if deployment is None:
            self._global = FaultPlan(settings)
        else:
            self._per_deployment[deployment] = FaultPlan(settings)

    def clear(self) -> None:
        self._global = None
        self._per_deployment.clear()

    def plan_for(self, deployment: str | None) -> FaultPlan | None:
        if deployment is not None and deployment in self._per_deployment:
            return self._per_deployment[deployment]
        return self._global

    def record(self, kind: str, path: str, deployment: str | None = None, **details: Any) -> None:
        self._log.append(
            {"kind": kind, "path": path, "deployment": deployment, "time": time.time(), **details}
        )
        self._counts[kind] += 1

    def records(self) -> list[dict[str, Any]]:
        return list(self._log)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def settings_as_json(self) -> dict[str, Any]:
        return {
            "global": dataclasses.asdict(self._global.settings) if self._global else None,
            "deployments": {
                name: dataclasses.asdict(plan.settings) for name, plan in self._per_deployment.items()
            },
        }

    def reset(self) -> None:
        self.clear()
        self._log.clear()
        self._counts.clear()
