"""Calling deployments: argument binding, batches, DataFrame mode, traceback text."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from airflow_provider_modelbit.emulator.deployments import DeploymentVersion, echo
from airflow_provider_modelbit.emulator.envelope import parse_envelope
from airflow_provider_modelbit.emulator.execution import run_inference


def run(
    function: Any, body: dict[str, Any], columns: tuple[str, ...] | None = None, sort: bool = False
) -> Any:
    target = DeploymentVersion("model", "main", 1, function, columns)
    outcome = run_inference(target, parse_envelope(orjson.dumps(body), allow_http_webhooks=False), sort)
    return outcome.error if outcome.error is not None else orjson.loads(outcome.encoded or b"null")


class TestBinding:
    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (5, 5),
            ({"a": 1}, {"a": 1}),
            ([1, 2], [1, 2]),
            ([[1, 2, 3]], [[1, [2, 3]]]),
            ([["id"]], [["id", []]]),
        ],
    )
    def test_echo(self, data: Any, expected: Any) -> None:
        assert run(echo, {"data": data}) == expected

    def test_sorted_by_id_with_mixed_types(self) -> None:
        assert run(echo, {"data": [["b", 1], [2, 2], ["a", 3], [1, 4]]}, sort=True) == [
            [1, 4],
            [2, 2],
            ["a", 3],
            ["b", 1],
        ]


class TestDataFrameMode:
    def test_length_mismatch_is_a_deployment_error(self) -> None:
        error = run(lambda frame: [1], {"data": [[0, {"a": 1}], [1, {"a": 2}]]}, columns=("a",))
        assert error.splitlines()[-1].startswith(
            "ValueError: DataFrame deployment 'model' returned 1 results for 2 rows"
        )

    def test_frame_has_declared_columns_and_id_index(self) -> None:
        seen = run(
            lambda frame: [list(frame.columns), list(frame.index)],
            {"data": [[7, {"a": 1, "z": 9}], [8, {}]]},
            columns=("a", "b"),
        )
        assert seen == [[7, ["a", "b"]], [8, [7, 8]]]


class TestErrors:
    def test_traceback_ends_with_type_and_message(self) -> None:
        def failing(x: int) -> int:
            raise KeyError(f"missing {x}")

        error = run(failing, {"data": 3})
        assert error.startswith("Traceback (most recent call last):")
        assert "in failing" in error
        assert error.splitlines()[-1] == "KeyError: 'missing 3'"

    def test_unencodable_result_is_a_deployment_error(self) -> None:
        assert run(lambda x: object(), {"data": 1}).splitlines()[-1].startswith("TypeError:")
