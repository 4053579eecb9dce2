"""The model of batches under an in-flight cap: the hook's limiter among several batches, simulated."""

from __future__ import annotations

from benchmarks.cap_model import SITUATIONS, main, simulate, summarize


class TestSituations:
    def test_alone_keeps_near_the_cap_with_few_refusals(self) -> None:
        run = simulate("alone", seed=0)
        assert run.answered_once
        assert run.capacity_fraction > 0.85, run
        assert run.refused_pct < 3, run

    def test_four_batches_sharing_the_cap_all_finish_each_chunk_answered_once(self) -> None:
        for seed in range(4):
            run = simulate("shared", seed)
            assert run.answered_once
            assert len(run.finished) == 4

    def test_a_batch_started_after_the_others_filled_the_cap_finds_a_place_while_they_run(self) -> None:
        """
        The three others hold the whole cap and refill their places as requests finish: only the
        places their refused probes leave free let the fourth in, long before they end (400 s).
        """
        for seed in range(6):
            run = simulate("late", seed)
            assert run.late_wait_seconds is not None
            assert run.late_wait_seconds < 60, run
            assert run.answered_once

    def test_a_seed_gives_the_same_run(self) -> None:
        assert simulate("shared", seed=3) == simulate("shared", seed=3)


def test_summary_and_report(capsys) -> None:
    figures = summarize("late", runs=2)
    assert figures["answered_once"] and "late_wait_seconds_max" in figures
    assert main(["--runs", "1"]) == 0
    report = capsys.readouterr().out
    assert all(f"| {situation} | 1 |" in report for situation in SITUATIONS), report
