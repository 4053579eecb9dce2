"""
Platform limits (§10 and §12.17): in-flight request count and bytes, and named per-minute limits.

Synchronous requests over a limit are rejected with 429 and ``Retry-After``; asynchronous
requests wait for capacity instead.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_modelbit.emulator.envelope import RequestRejected

QUEUE_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class RateLimit:
    """
    A named limit of requests per calendar minute, shared by the deployments it lists.

    :param name: the limit's name, quoted in 429 messages.
    :param per_minute: requests admitted per calendar minute (a batch counts once, never split).
    :param deployments: the deployments sharing it; empty means every deployment.
    """

    name: str
    per_minute: int
    deployments: frozenset[str] = frozenset()

    def applies_to(self, deployment: str) -> bool:
        return not self.deployments or deployment in self.deployments

    def as_json(self) -> dict[str, Any]:
        return {"per_minute": self.per_minute, "deployments": sorted(self.deployments)}


def parse_rate_limits(value: Mapping[str, Any] | None) -> dict[str, RateLimit]:
    """``{"name": {"per_minute": 10, "deployments": ["doubler"]}}`` (or RateLimit values) to limits."""
    limits: dict[str, RateLimit] = {}
    for name, spec in (value or {}).items():
        if isinstance(spec, RateLimit):
            limits[name] = spec
            continue
        per_minute = spec.get("per_minute") if isinstance(spec, Mapping) else spec
        if isinstance(per_minute, bool) or not isinstance(per_minute, int) or per_minute < 1:
            raise ValueError(f"Rate limit {name!r} needs a positive integer per_minute, got {per_minute!r}.")
        deployments = spec.get("deployments", ()) if isinstance(spec, Mapping) else ()
        limits[name] = RateLimit(name, per_minute, frozenset(deployments))
    return limits


def seconds_to_next_minute(now: float) -> int:
    return max(1, math.ceil(60 - now % 60))


class MinuteRateLimiter:
    """Counts admitted requests per limit and calendar minute."""

    def __init__(self) -> None:
        self._minute = -1
        self._used: dict[str, int] = {}

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self._minute:
            self._minute = minute
            self._used.clear()

    def exhausted_limit(
        self, limits: Mapping[str, RateLimit], deployment: str, now: float
    ) -> RateLimit | None:
        """The first limit this request would exceed; when none, the request is counted."""
        self._roll(now)
        matching = [limit for limit in limits.values() if limit.applies_to(deployment)]
        for limit in matching:
            if self._used.get(limit.name, 0) >= limit.per_minute:
                return limit
        for limit in matching:
            self._used[limit.name] = self._used.get(limit.name, 0) + 1
        return None

    def reset(self) -> None:
        self._used.clear()


class InflightLimiter:
    """Counts requests (and their body bytes) currently being served."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    def refusal(self, size: int, max_requests: int | None, max_bytes: int | None) -> str | None:
        """Why a request of ``size`` bytes cannot start now, or None.

        A request alone is always admitted by the bytes cap, so a body larger than the cap still
        runs (queued async requests would otherwise wait forever); the body-size limit bounds it.
        """
        if max_requests is not None and self.requests + 1 > max_requests:
            return "RateLimitExceeded: Concurrency request count limit reached"
        if max_bytes is not None and self.bytes + size > max_bytes and self.requests > 0:
            return "RateLimitExceeded: Concurrency request size limit reached"
        return None

    def acquire(self, size: int) -> None:
        self.requests += 1
        self.bytes += size

    def release(self, size: int) -> None:
        self.requests -= 1
        self.bytes -= size


@dataclass
class Limits:
    """
    The limiters of one emulator and the admission rules over them.

    :param inflight: concurrent request count and bytes.
    :param per_minute: named per-minute limits.
    """

    inflight: InflightLimiter
    per_minute: MinuteRateLimiter

    @classmethod
    def create(cls) -> Limits:
        return cls(InflightLimiter(), MinuteRateLimiter())

    def admit_sync(
        self,
        deployment: str,
        size: int,
        rate_limits: Mapping[str, RateLimit],
        caps: tuple[int | None, int | None],
    ) -> None:
        """Take a slot or raise a 429 :class:`RequestRejected`."""
        refusal = self.inflight.refusal(size, *caps)
        if refusal is not None:
            raise RequestRejected(429, refusal, retry_after=1)
        now = time.time()
        limit = self.per_minute.exhausted_limit(rate_limits, deployment, now)
        if limit is not None:
            raise RequestRejected(
                429,
                f"RateLimitExceeded: Rate limit {limit.name!r} of {limit.per_minute} "
                "requests per minute reached",
                retry_after=seconds_to_next_minute(now),
            )
        self.inflight.acquire(size)

    async def admit_queued(
        self,
        deployment: str,
        size: int,
        rate_limits: Mapping[str, RateLimit],
        caps: tuple[int | None, int | None],
    ) -> None:
        """Wait until the request fits every limit, then take a slot (async requests queue)."""
        while True:
            try:
                self.admit_sync(deployment, size, rate_limits, caps)
                return
            except RequestRejected as refusal:
                wait = QUEUE_POLL_SECONDS if refusal.retry_after == 1 else min(refusal.retry_after or 1, 1.0)
                await asyncio.sleep(wait)
