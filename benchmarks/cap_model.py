"""
A model of batches under an in-flight cap: the hook's ``ConcurrencyLimiter`` on a simulated clock.

The latency-bound runs (``latency_bound.py``) take tens of seconds each, and four tasks sharing a
cap vary by several per cent from one run to the next: too much to judge a change to the limiter
by three or four runs. This model puts the limiter itself through a discrete-event simulation of
the same situations, a fraction of a second each, so a change can be judged over many seeded runs:

- the server admits ``cap`` requests in flight, each for a round trip of 1 s (up to 2% more), and
  refuses at once one that arrives while ``cap`` are in flight (``Retry-After: 1``);
- each batch sends its chunks in order, at most ``max_concurrency`` outstanding as the hook's
  batch path keeps them, started lowest chunk first through ``try_acquire``; a refused chunk is
  sent again after ``Retry-After`` plus up to 0.1 s, as ``RetrySchedule`` waits;
- a millisecond of network each way, and 4 ms between an answer and the chunk it makes room for.

It leaves out what the real runs have: threads, HTTP, JSON and a loaded machine. The situations:
``alone`` (one batch of 320 chunks under a cap of 8, the capped run), ``shared`` (four batches of
80 chunks, the shared run) and ``late`` (three batches of 400 chunks and a fourth of 40 that starts
20 s later, once the others fill the cap: how long it waits for a place).

    python -m benchmarks.cap_model --runs 48
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_modelbit.defaults import DEFAULT_MAX_CONCURRENCY
from airflow_provider_modelbit.hooks.concurrency import ConcurrencyLimiter, Outcome, Slot

CAP = 8
ROUND_TRIP_SECONDS = 1.0
NETWORK_SECONDS = 0.001
NEXT_CHUNK_SECONDS = 0.004
RETRY_AFTER_SECONDS = 1.0
# How soon a batch whose next start is paced, or held back by Retry-After, looks again.
PACED_LOOK_SECONDS = 0.002
LATE_START_SECONDS = 20.0

# Batches of each situation: (chunks, start in seconds).
SITUATIONS: dict[str, list[tuple[int, float]]] = {
    "alone": [(320, 0.0)],
    "shared": [(80, 0.0)] * 4,
    "late": [(400, 0.0)] * 3 + [(40, LATE_START_SECONDS)],
}


class _Model:
    """The simulated clock, its events in time order, and the server's in-flight cap."""

    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.random = random.Random(seed)
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self.in_flight = 0
        self.requests = 0
        self.refused = 0
        self.served: list[tuple[float, float, int]] = []  # (start, end, batch) of each answered request

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (when, next(self._order), action, args))

    def run(self) -> None:
        while self._events:
            self.now, _, action, args = heapq.heappop(self._events)
            action(*args)

    def clock(self) -> float:
        return self.now


@dataclass
class _Batch:
    """One batch: its chunks, sent in order within a window of ``max_concurrency`` outstanding."""

    model: _Model
    number: int
    chunks: int
    start: float
    limiter: ConcurrencyLimiter = field(init=False)
    waiting: list[int] = field(default_factory=list)  # chunks ready to start, lowest first
    answered: list[int] = field(default_factory=list)  # times each chunk was answered
    next_chunk: int = 0
    done_in_order: int = 0
    finished: float | None = None
    looking: bool = False

    def __post_init__(self) -> None:
        model = self.model
        self.answered = [0] * self.chunks
        self.limiter = ConcurrencyLimiter(
            DEFAULT_MAX_CONCURRENCY,
            clock=model.clock,
            probe_spread=lambda: model.random.uniform(0.5, 1.5),
        )
        model.at(self.start, self.fill)

    def fill(self) -> None:
        """Take the chunks the window has room for, then start what the limiter admits."""
        window_end = min(self.chunks, self.done_in_order + DEFAULT_MAX_CONCURRENCY)
        while self.next_chunk < window_end:
            heapq.heappush(self.waiting, self.next_chunk)
            self.next_chunk += 1
        self.start_admitted()

    def start_admitted(self) -> None:
        self.looking = False
        while self.waiting:
            slot = self.limiter.try_acquire()
            if slot is None:
                if self.limiter.in_flight < self.limiter.limit:  # paced, or held back: look again soon
                    self.looking = True
                    self.model.at(self.model.now + PACED_LOOK_SECONDS, self.start_admitted)
                return  # else an answer makes room
            chunk = heapq.heappop(self.waiting)
            self.model.at(self.model.now + NETWORK_SECONDS, self.arrive, chunk, slot)

    def arrive(self, chunk: int, slot: Slot) -> None:
        model = self.model
        model.requests += 1
        if model.in_flight >= CAP:
            model.refused += 1
            model.at(model.now + NETWORK_SECONDS, self.refused, chunk, slot)
            return
        model.in_flight += 1
        seconds = ROUND_TRIP_SECONDS * model.random.uniform(1.0, 1.02)
        model.served.append((model.now, model.now + seconds, self.number))
        model.at(model.now + seconds, self.leave_server, chunk, slot)

    def leave_server(self, chunk: int, slot: Slot) -> None:
        self.model.in_flight -= 1
        self.model.at(self.model.now + NETWORK_SECONDS, self.answer, chunk, slot)

    def answer(self, chunk: int, slot: Slot) -> None:
        self.limiter.record(slot, Outcome.ANSWERED)
        self.limiter.release()
        self.answered[chunk] += 1
        while self.done_in_order < self.chunks and self.answered[self.done_in_order]:
            self.done_in_order += 1
        if self.done_in_order == self.chunks:
            self.finished = self.model.now
        self.model.at(self.model.now + NEXT_CHUNK_SECONDS, self.fill)
        self.start_admitted()

    def refused(self, chunk: int, slot: Slot) -> None:
        self.limiter.record(slot, Outcome.REFUSED, retry_after=RETRY_AFTER_SECONDS)
        self.limiter.release()
        wait = RETRY_AFTER_SECONDS + self.model.random.uniform(0, 0.1)
        self.model.at(self.model.now + wait, self.send_again, chunk)
        if not self.looking:
            self.start_admitted()

    def send_again(self, chunk: int) -> None:
        heapq.heappush(self.waiting, chunk)
        self.start_admitted()


@dataclass(frozen=True)
class Run:
    """
    One simulated run.

    :param capacity_fraction: chunks answered per round trip, over the cap, from the first start
        to the last finish.
    :param refused_pct: requests refused, per cent of all requests.
    :param answered_once: every chunk of every batch answered exactly once.
    :param finished: seconds each batch took, from its start.
    :param late_wait_seconds: for ``late``, seconds from the last batch's start to its first place.
    """

    capacity_fraction: float
    refused_pct: float
    answered_once: bool
    finished: list[float]
    late_wait_seconds: float | None


def simulate(situation: str, seed: int) -> Run:
    """Run one situation with one seed."""
    model = _Model(seed)
    batches = [
        _Batch(model, number, chunks, start) for number, (chunks, start) in enumerate(SITUATIONS[situation])
    ]
    model.run()
    ends = [batch.finished for batch in batches]
    if any(end is None for end in ends):
        raise RuntimeError(f"A batch of {situation!r} (seed {seed}) did not finish.")
    first_start = min(batch.start for batch in batches)
    span = max(end for end in ends if end is not None) - first_start
    chunks = sum(batch.chunks for batch in batches)
    late_wait = None
    if situation == "late":
        last = batches[-1]
        late_wait = min(start for start, _, number in model.served if number == last.number) - last.start
    return Run(
        capacity_fraction=chunks * ROUND_TRIP_SECONDS / span / CAP,
        refused_pct=100.0 * model.refused / model.requests,
        answered_once=all(count == 1 for batch in batches for count in batch.answered),
        finished=[round((batch.finished or 0.0) - batch.start, 1) for batch in batches],
        late_wait_seconds=late_wait,
    )


def summarize(situation: str, runs: int) -> dict[str, Any]:
    """Figures of ``runs`` seeded runs of one situation."""
    results = [simulate(situation, seed) for seed in range(runs)]
    fractions = [run.capacity_fraction for run in results]
    summary: dict[str, Any] = {
        "situation": situation,
        "runs": runs,
        "capacity_fraction_mean": statistics.fmean(fractions),
        "capacity_fraction_min": min(fractions),
        "capacity_fraction_max": max(fractions),
        "refused_pct_mean": statistics.fmean(run.refused_pct for run in results),
        "answered_once": all(run.answered_once for run in results),
    }
    waits = [run.late_wait_seconds for run in results if run.late_wait_seconds is not None]
    if waits:
        summary["late_wait_seconds_mean"] = statistics.fmean(waits)
        summary["late_wait_seconds_max"] = max(waits)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--runs", type=int, default=48, help="seeded runs per situation")
    parser.add_argument("--situation", choices=sorted(SITUATIONS), action="append")
    args = parser.parse_args(argv)
    print("| situation | runs | rows/s / capacity, mean (min-max) | refused | late batch's first place |")
    print("|---|---:|---|---:|---|")
    for situation in args.situation or list(SITUATIONS):
        figures = summarize(situation, args.runs)
        wait = (
            f"{figures['late_wait_seconds_mean']:.1f} s mean, {figures['late_wait_seconds_max']:.1f} s most"
            if "late_wait_seconds_mean" in figures
            else "—"
        )
        print(
            f"| {situation} | {args.runs} | {figures['capacity_fraction_mean']:.3f} "
            f"({figures['capacity_fraction_min']:.3f}-{figures['capacity_fraction_max']:.3f}) | "
            f"{figures['refused_pct_mean']:.1f}% | {wait} |"
        )
        if not figures["answered_once"]:
            print(f"{situation}: a chunk was answered more than once or never", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
