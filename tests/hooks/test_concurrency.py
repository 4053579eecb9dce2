"""The adaptive concurrency limit: its decisions on a fake clock, then one batch through the local server."""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import pytest

from airflow_provider_modelbit.exceptions import (
    ModelbitDeploymentError,
    ModelbitRateLimited,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.concurrency import ConcurrencyLimiter, Outcome, Slot, load_outcome


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _limiter(ceiling: int = 16, **options) -> tuple[ConcurrencyLimiter, FakeClock]:
    """A limiter on a fake clock whose waits between probes are not spread unless asked."""
    clock = FakeClock()
    options.setdefault("initial", 2)
    options.setdefault("probe_spread", lambda: 1.0)
    return ConcurrencyLimiter(ceiling, clock=clock, **options), clock


def _start(limiter: ConcurrencyLimiter, clock: FakeClock) -> Slot:
    """Start a request as a batch's thread would, the fake clock moving on while its start is paced."""
    for _ in range(10_000):
        if (slot := limiter.try_acquire()) is not None:
            return slot
        clock.now += 0.001
    raise AssertionError("no request could start")


def _round_trip(
    limiter: ConcurrencyLimiter,
    clock: FakeClock,
    outcome: Outcome = Outcome.ANSWERED,
    seconds: float = 0.5,
    cap: int | None = None,
) -> int:
    """
    Fill every allowed slot, let time pass, and answer them all with ``outcome``.

    With a ``cap``, requests past it are refused and the others answered, as a server's in-flight
    limit does. Returns the number of requests refused.
    """
    slots = [_start(limiter, clock) for _ in range(limiter.limit)]
    clock.now += seconds
    refused = 0
    for slot in reversed(slots):  # those past the cap are refused at once, before the others answer
        if cap is not None:
            outcome = Outcome.REFUSED if slot.level > cap else Outcome.ANSWERED
        refused += outcome is Outcome.REFUSED
        limiter.record(slot, outcome)
        limiter.release()
    return refused


def _grow(limiter: ConcurrencyLimiter, clock: FakeClock, round_trips: int = 6) -> list[int]:
    """The limit after each of some round trips answered fast."""
    levels = [limiter.limit]
    for _ in range(round_trips):
        _round_trip(limiter, clock)
        levels.append(limiter.limit)
    return levels


class TestGrowth:
    def test_grows_while_answers_are_fast(self) -> None:
        """Growth is by one per answer near the limit: the limit multiplies each round trip."""
        limiter, clock = _limiter()
        levels = _grow(limiter, clock)
        assert levels[0] == 2 and levels[-1] == 16
        assert all(later >= min(16, 1.4 * earlier) for earlier, later in pairwise(levels)), levels

    def test_never_exceeds_the_ceiling(self) -> None:
        limiter, clock = _limiter(ceiling=5)
        for _ in range(10):
            _round_trip(limiter, clock)
            assert limiter.limit <= 5
        assert limiter.limit == 5 and limiter.summary()["highest"] == 5

    def test_does_not_grow_when_the_limit_was_not_reached(self) -> None:
        """Answers to fewer requests than allowed prove nothing about a higher level."""
        limiter, clock = _limiter()
        reached = _grow(limiter, clock, 2)[-1]
        for _ in range(5):
            slot = _start(limiter, clock)
            clock.now += 0.5
            limiter.record(slot, Outcome.ANSWERED)
            limiter.release()
        assert limiter.limit == reached

    def test_fixed_mode_keeps_the_ceiling(self) -> None:
        limiter, clock = _limiter(ceiling=3, adaptive=False)
        _round_trip(limiter, clock, Outcome.REFUSED)
        assert limiter.limit == 3 and limiter.summary()["mode"] == "fixed"


class TestPacing:
    """Past the most requests ever in flight, starts are spread over a round trip, not sent in a burst."""

    def test_requests_past_the_most_ever_in_flight_start_one_per_fastest_answer_over_the_limit(self) -> None:
        limiter, clock = _limiter()
        first = [limiter.try_acquire() for _ in range(2)]  # before any answer: not paced
        assert all(first)
        clock.now += 0.5
        for slot in first:
            limiter.record(slot, Outcome.ANSWERED)
            limiter.release()
        assert limiter.limit == 4
        assert all(limiter.try_acquire() for _ in range(3))  # two as before, then the first past them
        assert limiter.try_acquire() is None  # the next one past them: 0.5 s / 4 after the last
        clock.now += 0.12
        assert limiter.try_acquire() is None
        clock.now += 0.01
        assert limiter.try_acquire() is not None

    def test_a_round_trips_answers_arriving_together_start_one_request_past_the_level_reached(self) -> None:
        """
        Eight answers arrive at once and most raise the limit: each frees a place its successor
        takes at once, but only one request goes past the 8 ever in flight until time passes, so a
        cap of 8 refuses one request, not one per answer.
        """
        limiter, clock = _limiter(initial=8)
        slots = [limiter.try_acquire() for _ in range(8)]
        clock.now += 0.5
        levels = []
        for slot in slots:
            limiter.record(slot, Outcome.ANSWERED)
            limiter.release()
            while (started := limiter.try_acquire()) is not None:
                levels.append(started.level)
        assert limiter.limit > 9  # room for more, unpaced
        assert len(levels) == 9 and max(levels) == 9, levels  # eight successors, and one more


class TestBackOff:
    @pytest.mark.parametrize("outcome", [Outcome.RATE_LIMITED, Outcome.TIMED_OUT])
    def test_halves_once_per_round_trip_on_quotas_and_timeouts(self, outcome: Outcome) -> None:
        limiter, clock = _limiter()
        assert _grow(limiter, clock)[-1] == 16
        _round_trip(limiter, clock, outcome)  # 16 answers report the same congestion
        assert limiter.limit == 8
        reason = "refusals" if outcome is Outcome.RATE_LIMITED else "timeouts"
        assert limiter.summary()["lowered"] == {reason: 1}

    @pytest.mark.parametrize("cap", [3, 5, 11])
    def test_goes_just_under_the_level_an_in_flight_cap_refused(self, cap: int) -> None:
        """
        The requests past the cap are refused in one burst, answered from the highest: one
        decision, and the limit is the cap (the first refusal leaves no place more free).
        """
        limiter, clock = _limiter()
        assert _grow(limiter, clock)[-1] == 16
        assert _round_trip(limiter, clock, cap=cap) == 16 - cap
        assert limiter.limit == cap
        assert _round_trip(limiter, clock, cap=cap) == 0
        assert limiter.limit == cap
        assert limiter.summary()["lowered"] == {"refusals": 1}

        limiter, clock = _limiter()
        _round_trip(limiter, clock, Outcome.OTHER)
        assert limiter.limit == 2

    def test_climbs_back_fast_then_probes_past_a_refused_level_ever_more_rarely(self) -> None:
        """Under a cap of 8, refusals become rarer: each failed probe doubles the wait before the next."""
        limiter, clock = _limiter()
        refused_round_trips, levels = [], []
        refused = 0
        for round_trip in range(300):
            levels.append(limiter.limit)
            if refused_now := _round_trip(limiter, clock, cap=8):
                refused_round_trips.append(round_trip)
                refused += refused_now
        gaps = [later - earlier for earlier, later in pairwise(refused_round_trips)]
        assert gaps == sorted(gaps) and gaps[-1] > 3 * gaps[0], gaps
        assert refused <= 0.02 * sum(levels)
        # Back at the cap within a few round trips of each refusal: most round trips run at 8.
        assert levels.count(8) >= 0.8 * len(levels), levels

    def test_probes_past_a_low_level_stay_frequent(self) -> None:
        """
        A probe's gain is one place over those the batch holds: all it lacks when held to 1 or 2
        (by others sharing the cap, who may finish any time), an eighth more when it holds 8. So
        the wait between refused probes is bounded by a quarter of the square of the places held:
        a round trip holding 1 or 2 (a probe every 2 or 3 with its own and the climb back after
        it), 4 holding 4, while past 8 the spacing keeps a steady cap's refusals rare.
        """
        settled_gaps = {}
        for cap in (1, 2, 4, 8):
            limiter, clock = _limiter()
            refused_round_trips = [
                round_trip for round_trip in range(400) if _round_trip(limiter, clock, cap=cap)
            ]
            gaps = [later - earlier for earlier, later in pairwise(refused_round_trips)]
            settled_gaps[cap] = max(gaps[-5:])
        assert settled_gaps[1] <= 2 and settled_gaps[2] <= 3 < settled_gaps[4] <= 8, settled_gaps
        assert settled_gaps[8] >= 16, settled_gaps

    def test_a_refused_probe_holding_one_place_keeps_it(self) -> None:
        """Held to 1 place, a refused probe leaves the limit at 1: it costs the refused request alone."""
        limiter, clock = _limiter()
        for _ in range(50):
            _round_trip(limiter, clock, cap=1)
            assert limiter.limit >= 1
        levels = []
        for _ in range(20):
            _round_trip(limiter, clock, cap=1)
            levels.append(limiter.limit)
        assert set(levels) == {1, 2}, levels  # 2 only for the probes themselves

    def test_waits_between_probes_are_spread(self) -> None:
        """
        Batches started together would probe in the same round trips and leave places free at once:
        each wait is multiplied by a factor drawn between 0.5 and 1.5.
        """
        gaps_by_factor = {}
        for factor in (0.5, 1.5):
            limiter, clock = _limiter(probe_spread=lambda factor=factor: factor)
            refused_round_trips = [
                round_trip for round_trip in range(300) if _round_trip(limiter, clock, cap=8)
            ]
            gaps_by_factor[factor] = [later - earlier for earlier, later in pairwise(refused_round_trips)]
        settled = {factor: gaps[-1] for factor, gaps in gaps_by_factor.items()}
        assert 2.5 * settled[0.5] <= settled[1.5], gaps_by_factor

    def test_waits_between_probes_are_drawn_between_half_and_one_and_a_half(self) -> None:
        limiter = ConcurrencyLimiter(8)
        factors = [limiter._probe_spread() for _ in range(1_000)]
        assert 0.5 <= min(factors) < 0.6 and 1.4 < max(factors) <= 1.5

    def test_climbs_to_a_cap_that_grew_in_a_few_round_trips(self) -> None:
        """
        Settled under a cap of 4 (as one of several batches sharing it), then alone under 12: the
        first answered probe says the room grew, by how much is unknown, so the limit grows as at
        the start, one per answer, and settles at the new cap after one burst of refusals.
        """
        limiter, clock = _limiter()
        for _ in range(200):
            _round_trip(limiter, clock, cap=4)
        assert limiter.limit == 4
        levels, refused = [], []
        for _ in range(50):
            refused.append(_round_trip(limiter, clock, cap=12))
            levels.append(limiter.limit)
        assert levels.index(12) < 12, levels
        assert sum(refused[:12]) <= 3, refused  # the one burst past the new cap
        assert levels[12:].count(12) >= 0.8 * len(levels[12:]), levels

    def test_a_refusal_measures_the_requests_the_server_saw(self) -> None:
        """
        Two requests started together reach the server in either order: the one started at level 8
        may be the one refused while 9 are in flight, and the cap it measures is 8, not 7.
        """
        limiter, clock = _limiter(ceiling=9)
        assert _grow(limiter, clock)[-1] == 9
        slots = [_start(limiter, clock) for _ in range(9)]
        clock.now += 0.5
        limiter.record(slots[7], Outcome.REFUSED)
        limiter.release()
        for slot in slots[:7] + slots[8:]:
            limiter.record(slot, Outcome.ANSWERED)
            limiter.release()
        assert _round_trip(limiter, clock, cap=8) == 0
        assert limiter.limit == 8

    def test_a_refused_probe_leaves_a_place_free_for_a_round_trip(self) -> None:
        """
        Under a cap of 8, a probe at 9 refused: the limit goes to 7, not 8, until a request sent
        after the refusal is answered, so a batch sharing the cap and holding no place finds one.
        """
        limiter, clock = _limiter()
        for _ in range(100):
            _round_trip(limiter, clock, cap=8)
        while limiter.limit < 9:
            _round_trip(limiter, clock, cap=8)  # until the next probe
        slots = [_start(limiter, clock) for _ in range(9)]
        limiter.record(slots[8], Outcome.REFUSED)
        limiter.release()
        assert limiter.limit == 7
        clock.now += 0.5
        for slot in slots[:8]:  # sent before the refusal: their answers leave the limit alone
            limiter.record(slot, Outcome.ANSWERED)
            limiter.release()
        assert limiter.limit == 7
        sent_after = [_start(limiter, clock) for _ in range(7)]
        limiter.record(sent_after[-1], Outcome.ANSWERED)
        limiter.release()
        assert limiter.limit == 8

    @pytest.mark.parametrize(("cap", "every"), [(8, 1), (4, 2), (2, 4)])
    def test_refused_probes_leave_places_free_in_proportion_to_the_places_held(
        self, cap: int, every: int
    ) -> None:
        """
        Holding 8 places, each refused probe leaves one more free for a round trip; holding 4,
        every second; holding 2, every fourth: a batch holding many gives way more often than one
        holding few, and the shares of batches sharing a cap even out.
        """
        limiter, clock = _limiter()
        left_free = []
        for _ in range(400):
            if _round_trip(limiter, clock, cap=cap) and limiter.summary()["lowered"]["refusals"] > 1:
                left_free.append(limiter.limit == cap - 1)  # else just under the refused level: cap
                assert limiter.limit in (cap - 1, cap), limiter.limit
        assert len(left_free) >= 8, left_free
        assert sum(left_free) == len(left_free) // every, left_free

    def test_a_refusal_below_the_known_level_leaves_no_place_free(self) -> None:
        """
        Settled under a cap of 8, then refused at 6: others took two of the batch's places; it
        goes just under, to 5, and leaves none more free, since it does not lack one.
        """
        limiter, clock = _limiter()
        for _ in range(30):
            _round_trip(limiter, clock, cap=8)
        assert limiter.limit == 8
        _round_trip(limiter, clock, cap=5)
        assert limiter.limit == 5


class TestOrder:
    """Waiting requests start lowest order first (a batch's chunk index), then the first to ask."""

    def test_a_lower_order_starts_before_higher_orders_that_asked_first(self) -> None:
        # Chunk 2 is a refused chunk sent again after the chunks behind it asked.
        assert _started_in_turn([(5, "5"), (6, "6"), (2, "2")]) == ["2", "5", "6"]

    def test_equal_orders_start_in_the_order_they_asked(self) -> None:
        assert _started_in_turn([(3, "first"), (3, "second"), (3, "third")]) == ["first", "second", "third"]


def _started_in_turn(requests: list[tuple[int, str]]) -> list[str]:
    """
    Queue one thread per ``(order, name)``, in that order, while the only place is taken; free it
    and return the names in the order they started.
    """
    limiter, _ = _limiter(ceiling=1, adaptive=False)
    limiter.acquire()
    started: list[str] = []

    def start(order: int, name: str) -> None:
        limiter.acquire(order=order)
        started.append(name)
        limiter.release()

    waiters = []
    for request in requests:
        waiters.append(threading.Thread(target=start, args=request, daemon=True))
        waiters[-1].start()
        _wait_until(lambda: len(limiter._waiting) == len(waiters))
    limiter.release()
    for waiter in waiters:
        waiter.join(10)
    return started


def _wait_until(condition, seconds: float = 30.0) -> None:
    """Wait for another thread to reach a state (sized for a loaded machine)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the waiting threads never queued"
        time.sleep(0.01)


class TestRetryAfter:
    def test_no_request_starts_before_a_quotas_retry_after(self) -> None:
        limiter, clock = _limiter()
        slot = limiter.acquire()
        limiter.record(slot, Outcome.RATE_LIMITED, retry_after=3.0)
        limiter.release()
        started = threading.Event()

        def start_one() -> None:
            limiter.acquire()
            started.set()

        waiter = threading.Thread(target=start_one, daemon=True)
        waiter.start()
        assert not started.wait(0.3)
        clock.now += 3.0
        assert started.wait(10)
        waiter.join(10)

    def test_a_concurrency_caps_refusal_leaves_other_requests_free_to_start(self) -> None:
        """Requests in flight free the cap's places as they finish; the refused one waits by itself."""
        limiter, clock = _limiter()
        _grow(limiter, clock)
        slots = [_start(limiter, clock) for _ in range(4)]
        limiter.record(slots[-1], Outcome.REFUSED, retry_after=1.0)
        limiter.release()
        assert limiter.limit == 3  # just under the refused level
        for slot in slots[:2]:
            limiter.record(slot, Outcome.ANSWERED)
            limiter.release()
        limiter.acquire()  # at once: the fake clock never moves, so a pause would block forever

    def test_a_concurrency_caps_refusal_with_nothing_else_in_flight_holds_the_batch_back(self) -> None:
        """
        The cap is full of other callers' requests and none of the batch's will free a place:
        sending the waiting requests one after another would only be refused in turn.
        """
        limiter, clock = _limiter()
        slot = limiter.acquire()
        limiter.record(slot, Outcome.REFUSED, retry_after=1.0)
        limiter.release()
        assert limiter.try_acquire() is None
        clock.now += 1.0
        assert limiter.try_acquire() is not None

    def test_a_stopped_batch_stops_waiting(self) -> None:
        limiter, _ = _limiter()
        slot = limiter.acquire()
        limiter.record(slot, Outcome.RATE_LIMITED, retry_after=60.0)
        limiter.release()
        stopping = threading.Event()
        stopping.set()
        with pytest.raises(InterruptedError):
            limiter.acquire(stopping)


class TestTryAcquire:
    """The non-blocking admission an event loop uses (the callback trigger's pacer)."""

    def test_admits_up_to_the_limit_and_never_waits(self) -> None:
        limiter, _ = _limiter(ceiling=4)
        slots = [limiter.try_acquire() for _ in range(3)]
        assert [slot is not None for slot in slots] == [True, True, False]
        limiter.release()
        assert limiter.try_acquire() is not None

    def test_admits_nothing_before_a_quotas_retry_after(self) -> None:
        limiter, clock = _limiter()
        slot = limiter.try_acquire()
        assert slot is not None
        limiter.record(slot, Outcome.RATE_LIMITED, retry_after=3.0)
        limiter.release()
        assert limiter.try_acquire() is None
        clock.now += 3.0
        assert limiter.try_acquire() is not None


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ModelbitRateLimited("RateLimitExceeded: Concurrency request count limit reached"), Outcome.REFUSED),
        (ModelbitRateLimited("RateLimitExceeded: Concurrency request size limit reached"), Outcome.REFUSED),
        (
            ModelbitRateLimited("RateLimitExceeded: Rate limit 'a' of 5 requests per minute"),
            Outcome.RATE_LIMITED,
        ),
        (ModelbitTransportError("429", status=429), Outcome.RATE_LIMITED),
        (ModelbitTransportError("503", status=503), Outcome.RATE_LIMITED),
        (ModelbitTimeout("slow"), Outcome.TIMED_OUT),
        (ModelbitTransportError("502", status=502), Outcome.OTHER),
        (ModelbitDeploymentError("boom", status=500), Outcome.OTHER),
    ],
)
def test_load_outcome(error, outcome: Outcome) -> None:
    assert load_outcome(error) is outcome


class TestThroughTheLocalServer:
    def test_reaches_an_in_flight_cap_without_a_storm_of_refusals(self, emulator, hook_for) -> None:
        """Cap 4, ceiling 16: the batch settles at the cap, few requests are refused, each row runs once."""
        emulator.client.configure(max_inflight_requests=4)
        emulator.client.set_faults(model_seconds=0.1)
        hook = hook_for(emulator.url, batch_size=2)
        rows = [[number, number] for number in range(160)]
        results = hook.get_inference("doubler", rows)
        assert results == [[number, 2 * number] for number in range(160)]
        assert set(emulator.client.runs("doubler").values()) == {1}
        assert len(emulator.client.runs("doubler")) == 160
        summary = hook.concurrency
        assert summary is not None and summary["mode"] == "adaptive" and summary["highest"] >= 4
        # The ramp overshoots the cap once before the first refusal returns, then each probe past it
        # costs one refusal, ever more rarely: a few per cent of the 80 requests, where a fixed
        # ceiling of 16 would be refused on every request past the cap. Loaded machines measured 2-7.
        refused = sum(1 for request in emulator.client.requests() if request.get("status") == 429)
        assert refused <= 0.1 * len(rows) / 2, summary
