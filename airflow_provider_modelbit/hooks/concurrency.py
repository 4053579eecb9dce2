"""How many requests a batch keeps in flight: an adaptive limit, in the manner of TCP congestion control.

Throughput against a deployment that takes time is decided by concurrency, and the right level
is unknown in advance: it depends on the workspace's in-flight caps, the deployment's rate limits
and everyone else calling it. The :class:`ConcurrencyLimiter` finds it as TCP finds a path's
capacity (and as Netflix's concurrency-limits does for services):

- it starts low (3, the level Modelbit's own client always keeps) and, while nothing is refused
  and latency stays flat, raises the limit by one per answer (doubling every round trip) until
  the first sign of congestion;
- past the most requests it ever had in flight, it paces the growth as TCP paces a window:
  requests start there one per fastest answer's time divided by the limit, spread over the
  round trip rather than one per answer as a round trip's answers arrive together. A cap's
  refusal comes back long before a round trip ends, so the first request past the cap is
  refused before the next one starts, where unpaced each answer of that round trip would send
  one more into the same refusal. Below that level (climbing back after a decrease) requests
  start as places free, and before any answer (the first requests) they are not paced;
- a refusal by the workspace's in-flight cap ("Concurrency request count/size limit reached")
  says how much was too much: the server saw at least as many requests as were in flight when the
  refused one started, or when its refusal came back (requests started together reach the server
  in either order), so the cap is below that level. The limit goes just under the lowest refused
  level, however many requests of one burst were refused;
- any other refusal (429 for a quota, 503) or a timeout carries no such measure and halves the
  limit, once per round trip however many requests report the same congestion;
- rising latency halves it too, once every answer of a whole round trip came back slower than
  ``latency_tolerance`` times the fastest answer: a few slow answers among fast ones are the
  model's jitter, not a queue;
- only a cap's refusal measures a level, so only it is remembered: after a halving the limit
  grows again at its usual rate, one per answer, up to the remembered level or the ceiling. Near
  a remembered level the limit climbs back quickly to just below it and probes beyond it one
  step at a time, waiting twice as long before each new probe that was refused, so a steady cap
  costs a refusal every many requests rather than every round trip. The wait is at most a quarter
  of the square of the places the batch holds, in round trips: a probe stands to gain one place,
  an eighth more for a batch holding 8 but all it lacks for one held to one or two places by
  others sharing the cap, which must find theirs soon after they finish. Each wait is drawn
  between half and one and a half times its length, so batches started together (mapped tasks)
  do not probe all at once;
- batches sharing a cap each refill their own places as their requests finish, so a batch that
  holds none (started after the others filled the cap, say) would be kept out until the others
  end: a refused probe leaves one place more free for a round trip, in proportion to the places
  the batch holds (at each refused probe holding 8, at every fourth holding 2). A batch holding
  many gives way more often than one holding few, which probes more often and takes the places
  left: the shares of batches sharing a cap drift less far apart, so they finish closer together
  and the last one spends less time alone under the cap. Other refusals leave none: the first,
  when no level is known yet, comes as batches started together fill the cap with even shares,
  and one below the known level says others took places the batch held, not that one lacks any.
  A batch's refused requests wait, spending no retry attempt (:mod:`.retries`), until a place
  frees or the time budget is spent;
- a probe answered says the room grew (another caller of the same deployment finished, say), by
  how much is unknown: the remembered level is forgotten and the limit grows one per answer, as
  at the start, so a batch left alone under a cap it shared reaches the whole cap in a few round
  trips;
- ``Retry-After`` is always honoured by the refused request, which waits that long before it is
  sent again. A refusal for a quota (a per-minute rate limit, or any refusal that does not name
  the workspace's concurrency caps) also holds back every new request until then, since requests
  finishing will not reopen it; a refusal by a concurrency cap ("Concurrency request count/size
  limit reached") does not while the batch has other requests in flight, since they free their
  places as they finish and the lowered limit already keeps the batch below the cap. With none in
  flight, the cap is full of other callers' requests and nothing of the batch's will free a place:
  it holds back too, rather than send its waiting requests one after another into the same
  refusal.

A fixed limit (``adaptive=False``) keeps the ceiling throughout and still honours ``Retry-After``.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_modelbit.defaults import (
    CONCURRENCY_LOG_INTERVAL_SECONDS,
    DEFAULT_INITIAL_CONCURRENCY,
    DEFAULT_LATENCY_TOLERANCE,
    FIRST_PROBE_ROUND_TRIPS,
    LATENCY_SLACK_SECONDS,
    MAX_PROBE_ROUND_TRIPS,
    PLACES_PER_PLACE_LEFT_FREE,
)
from airflow_provider_modelbit.exceptions import ModelbitError, ModelbitRateLimited, ModelbitTimeout
from airflow_provider_modelbit.hooks.retries import refused_for_capacity

# Statuses by which a server says it has no room now: too many requests, or none served at the moment.
_NO_ROOM_STATUSES = {429, 503}


class Outcome(Enum):
    """What a request's answer says about the deployment's load."""

    ANSWERED = "answered"
    REFUSED = "refused"  # by a concurrency cap: capacity returns as requests finish
    RATE_LIMITED = "rate limited"  # by a quota or an unavailable service: wait for Retry-After
    TIMED_OUT = "timed out"
    OTHER = "failed otherwise"


def load_outcome(error: ModelbitError) -> Outcome:
    """What a failed request says about the deployment's load (the retry decision is made elsewhere)."""
    if isinstance(error, ModelbitRateLimited) or error.status in _NO_ROOM_STATUSES:
        return Outcome.REFUSED if refused_for_capacity(error) else Outcome.RATE_LIMITED
    if isinstance(error, ModelbitTimeout):
        return Outcome.TIMED_OUT
    return Outcome.OTHER


@dataclass(frozen=True)
class Slot:
    """
    One request's place in flight.

    :param level: requests in flight once this one started, itself included (growing the limit
        is only worth it when the requests in flight came near it).
    :param epoch: the limiter's count of decreases when it started; congestion it reports after a
        later decrease was already reacted to.
    :param started: monotonic time it started.
    """

    level: int
    epoch: int
    started: float


@dataclass
class _Decisions:
    """Changes of the limit since the last log line, and over the whole batch."""

    raised: int = 0
    lowered: Counter[str] = field(default_factory=Counter)
    lowered_total: Counter[str] = field(default_factory=Counter)

    def lower(self, reason: str) -> None:
        self.lowered[reason] += 1
        self.lowered_total[reason] += 1

    def pending(self) -> bool:
        return bool(self.raised or self.lowered)

    def describe(self) -> str:
        lowered = ", ".join(f"{count} {reason}" for reason, count in sorted(self.lowered.items()))
        return f"raised {self.raised} time(s), lowered on {lowered or 'nothing'}"

    def clear(self) -> None:
        self.raised = 0
        self.lowered.clear()


class ConcurrencyLimiter:
    """
    Admit requests up to a limit that adapts to the deployment's answers (see the module's docstring).

    Threads call :meth:`acquire` before each request, :meth:`release` after it and :meth:`record`
    with its outcome. Waiting requests start lowest ``order`` first, then in the order they asked:
    a batch orders them by chunk, so a refused chunk sent again after its ``Retry-After`` goes
    before the chunks behind it rather than queue after them, and results written in input order
    are not held back by it.

    :param ceiling: the most requests ever in flight (``max_concurrency``).
    :param adaptive: adapt the limit; ``False`` keeps it at ``ceiling``.
    :param initial: the limit before any answer (capped by ``ceiling``).
    :param latency_tolerance: latency above this multiple of the fastest answer counts as congestion.
    :param where: what the requests go to, for log lines.
    :param log: where decisions are logged, at most once per ``log_interval`` seconds.
    :param log_interval: seconds between decision logs.
    :param clock: monotonic time source, replaceable in tests.
    :param probe_spread: the factor, between 0.5 and 1.5, each wait between probes is multiplied by;
        replaceable in tests.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        adaptive: bool = True,
        initial: int = DEFAULT_INITIAL_CONCURRENCY,
        latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
        where: str = "Modelbit",
        log: logging.Logger | Any | None = None,
        log_interval: float = CONCURRENCY_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        probe_spread: Callable[[], float] = lambda: random.uniform(0.5, 1.5),
    ) -> None:
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.latency_tolerance = latency_tolerance
        self._limit = float(min(initial, ceiling) if adaptive else ceiling)
        self._highest = int(self._limit)
        self._where = where
        self._log = log
        self._log_interval = log_interval
        self._clock = clock
        self._condition = threading.Condition()
        self._waiting: list[tuple[int, int]] = []  # (order, arrival) of the requests waiting to start
        self._arrivals = itertools.count()
        self._in_flight = 0
        self._reached = 0  # the most requests ever in flight at once
        self._next_growth = 0.0  # when the next request past that level may start
        self._epoch = 0
        self._paused_until = 0.0
        self._too_much: int | None = None  # the lowest level that brought congestion
        self._probe_round_trips = float(FIRST_PROBE_ROUND_TRIPS)
        self._probe_spread = probe_spread
        self._probe_factor = probe_spread()
        self._credit = 0.0
        self._free_credit = 0.0  # places held by refused probes, over PLACES_PER_PLACE_LEFT_FREE
        self._fastest: float | None = None
        self._slow_in_a_row = 0  # answers since the last decrease, each slower than the tolerance
        self._decisions = _Decisions()
        self._last_log = clock()

    # ------------------------------------------------------------------ state

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def summary(self) -> dict[str, Any]:
        """The limiter's final state, for a task's return value."""
        with self._condition:
            return {
                "mode": "adaptive" if self.adaptive else "fixed",
                "final": self.limit,
                "highest": self._highest,
                "ceiling": self.ceiling,
                "lowered": dict(self._decisions.lowered_total),
            }

    # ------------------------------------------------------------------ admission

    def acquire(self, stopping: threading.Event | None = None, *, order: int = 0) -> Slot:
        """
        Wait until a request may start, honouring the limit and ``Retry-After``; among the waiting
        requests, the lowest ``order`` starts first, then the first to ask.
        """
        with self._condition:
            turn = (order, next(self._arrivals))
            self._waiting.append(turn)
            try:
                while True:
                    wait = self._wait_before_start(turn)
                    if wait == 0.0:
                        break
                    if stopping is not None and stopping.is_set():
                        raise InterruptedError("stopped while waiting for a request slot")
                    self._condition.wait(timeout=min(wait, 0.5))
            finally:
                self._waiting.remove(turn)
                self._condition.notify_all()
            return self._admit()

    def try_acquire(self) -> Slot | None:
        """
        Admit a request now if the limit and ``Retry-After`` allow and nobody waits; never blocks.

        For an event loop (the callback trigger paces async submissions with it), where waiting
        on :meth:`acquire` would block every other trigger of the loop.
        """
        with self._condition:
            if self._waiting or self._wait_before_start(None) > 0:
                return None
            return self._admit()

    def _wait_before_start(self, turn: tuple[int, int] | None) -> float:
        """
        0 when a request may start now (``turn``, or any request when ``None``), else a bound on
        how long to wait before looking again.
        """
        now = self._clock()
        pause = self._paused_until - now
        if pause > 0:
            return pause
        if (turn is not None and min(self._waiting) != turn) or self._in_flight >= self.limit:
            return 0.5
        if self._in_flight >= self._reached:
            return max(0.0, self._next_growth - now)  # it would be a level never reached: paced
        return 0.0

    def _admit(self) -> Slot:
        """Count a request in flight; past the most ever in flight, set when the next one past may start."""
        now = self._clock()
        self._in_flight += 1
        if self._in_flight > self._reached:
            self._reached = self._in_flight
            if self._fastest is not None:
                self._next_growth = now + self._fastest / self.limit
        return Slot(self._in_flight, self._epoch, now)

    def release(self) -> None:
        with self._condition:
            self._in_flight -= 1
            self._condition.notify_all()

    # ------------------------------------------------------------------ feedback

    def record(self, slot: Slot, outcome: Outcome, *, retry_after: float | None = None) -> None:
        """
        Adapt the limit to one request's outcome; after a quota's refusal, or a cap's with no other
        request in flight, hold new requests back until its ``Retry-After``.

        Called before :meth:`release`, so the requests still in flight, this one included, are
        the level the server saw when it answered.
        """
        now = self._clock()
        with self._condition:
            holds_back = outcome is Outcome.RATE_LIMITED or (
                outcome is Outcome.REFUSED and self._in_flight <= 1
            )
            if holds_back and retry_after is not None and retry_after > 0:
                self._paused_until = max(self._paused_until, now + retry_after)
            if self.adaptive:
                self._adapt(slot, outcome, now - slot.started)
            self._maybe_log(now)
            self._condition.notify_all()

    def _adapt(self, slot: Slot, outcome: Outcome, seconds: float) -> None:
        if outcome is Outcome.ANSWERED:
            if self._latency_rising(slot, seconds):
                self._halve(slot, "rising latency")
            else:
                self._raise(slot)
        elif outcome is Outcome.REFUSED:
            self._fit_under_cap(slot)
        elif outcome is Outcome.RATE_LIMITED:
            self._halve(slot, "refusals")
        elif outcome is Outcome.TIMED_OUT:
            self._halve(slot, "timeouts")

    def _latency_rising(self, slot: Slot, seconds: float) -> bool:
        """
        Tell whether a whole round trip of answers came back much slower than the fastest, a sign
        requests queue.

        One answer, or a burst of them, slower than the rest is the model's or the network's
        jitter: only a rise that lasts as many answers in a row as the limit allows in flight,
        every one sent since the last decrease, counts.
        """
        self._fastest = seconds if self._fastest is None else min(self._fastest, seconds)
        if slot.epoch != self._epoch:
            return False  # sent before the last decrease: its wait was already answered
        if seconds <= self.latency_tolerance * self._fastest + LATENCY_SLACK_SECONDS:
            self._slow_in_a_row = 0
            return False
        self._slow_in_a_row += 1
        return self._slow_in_a_row >= self.limit

    def _raise(self, slot: Slot) -> None:
        """Grow by one per answer below the known trouble level, then probe one step per wait."""
        if slot.epoch != self._epoch or 2 * slot.level < self.limit or self.limit >= self.ceiling:
            # Sent before the last decrease, or with far fewer requests in flight than allowed now:
            # its answer says nothing about a higher level.
            return
        if self._too_much is not None and slot.level >= self._too_much:
            # A probe past the remembered level was answered: the room grew, by how much is unknown.
            self._too_much = None
            self._probe_round_trips = float(FIRST_PROBE_ROUND_TRIPS)
        if self._too_much is None or self.limit + 1 < self._too_much:
            self._set_limit(self._limit + 1)
            return
        # Near the level that brought trouble: one step after a wait of some round trips.
        self._credit += 1 / self.limit
        if self._credit >= self._probe_round_trips * self._probe_factor:
            self._credit = 0.0
            self._probe_factor = self._probe_spread()
            self._set_limit(self._limit + 1)

    def _fit_under_cap(self, slot: Slot) -> None:
        """Go under the level at which an in-flight cap refused a request, and remember that level."""
        # Requests started together reach the server in either order: one started at level 8 may
        # arrive after another started at 9 and be the one refused. The server saw at least the
        # requests still in flight now, this one included.
        level = max(slot.level, self._in_flight)
        probe = self._too_much is not None and level >= self._too_much
        if slot.epoch == self._epoch:
            self._start_decrease("refusals")
            if probe:
                # A probe past the known level was refused again: wait twice as long before the next.
                self._probe_round_trips *= 2
        elif probe:
            return  # a request of a burst already answered by a lower refused level
        # Else an earlier request of a burst refused at a lower level: the same decision, more precise.
        self._probe_round_trips = min(self._probe_round_trips, self._longest_probe_wait(level))
        self._too_much = level
        left_free = 1 if probe and self._leave_a_place_free(held=level - 1) else 0
        self._limit = float(min(self.limit, max(1, level - 1 - left_free)))

    def _leave_a_place_free(self, held: int) -> bool:
        """
        Count a refused probe's ``held`` places toward the next place left free; tell whether this
        probe leaves one more free for a round trip (until an answer to a request sent after it
        raises the limit, ``_raise``).

        Batches sharing a cap each refill their own places as their requests finish, so a batch
        that holds none (started after the others filled the cap, say) is kept out until one leaves
        a place free. The places a batch leaves free are in proportion to those it holds, so a
        batch holding many gives way more often than one holding few, which probes more often
        (:meth:`_longest_probe_wait`) and takes the places left: the shares drift less far apart.
        """
        self._free_credit += held / PLACES_PER_PLACE_LEFT_FREE
        if self._free_credit < 1:
            return False
        self._free_credit -= 1
        return True

    @staticmethod
    def _longest_probe_wait(level: int) -> float:
        """
        Round trips between probes at most, past a cap that refused ``level`` requests.

        A probe stands to gain one place over the ``level - 1`` the batch holds: all it lacks when
        held to one or two places by others sharing the cap (who may finish any time), an eighth
        more when it holds 8. So the wait grows faster than the places held, as a quarter of their
        square: a batch alone under a steady cap of 8 probes every 16 round trips at most, one held
        to 4 places every 4, and one held to 1 or 2 every round trip, so it finds the others' places
        soon after they finish. A refused probe costs the refused request alone, unless it leaves a
        place free (:meth:`_leave_a_place_free`).
        """
        return float(min(MAX_PROBE_ROUND_TRIPS, max(1.0, (level - 1) ** 2 / 4)))

    def _halve(self, slot: Slot, reason: str) -> None:
        """
        Halve the limit, once per round trip of requests; no level is remembered, since neither a
        quota, an unavailable service, a timeout nor a slow answer says which level was too much.
        """
        if slot.epoch != self._epoch:
            return  # started before the last decrease: that congestion was already answered
        self._start_decrease(reason)
        self._limit = float(max(1, self.limit // 2))

    def _start_decrease(self, reason: str) -> None:
        """Open a new epoch: answers to requests sent before it no longer move the limit."""
        self._epoch += 1
        self._credit = 0.0
        self._slow_in_a_row = 0
        self._decisions.lower(reason)

    def _set_limit(self, value: float) -> None:
        self._limit = min(float(self.ceiling), value)
        self._highest = max(self._highest, self.limit)
        self._decisions.raised += 1

    # ------------------------------------------------------------------ logging

    def _maybe_log(self, now: float) -> None:
        if self._log is None or not self._decisions.pending() or now - self._last_log < self._log_interval:
            return
        self._last_log = now
        self._log.info(
            "%s: %d request(s) in flight allowed (ceiling %d); since the last report the limit was %s.",
            self._where,
            self.limit,
            self.ceiling,
            self._decisions.describe(),
        )
        self._decisions.clear()

    def log_final(self) -> None:
        """Log where the limit ended, once the batch is done."""
        if self._log is None:
            return
        summary = self.summary()
        lowered = ", ".join(f"{count} {reason}" for reason, count in sorted(summary["lowered"].items()))
        self._log.info(
            "%s: concurrency %s ended at %d request(s) in flight (highest %d, ceiling %d); lowered on %s.",
            self._where,
            summary["mode"],
            summary["final"],
            summary["highest"],
            summary["ceiling"],
            lowered or "nothing",
        )
