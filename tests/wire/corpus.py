"""The inputs both the official Modelbit client and the hook send in the wire-compatibility test.

Imported by path in two environments (the provider's, and the official client's own), so it
uses only the standard library, numpy and pandas, and builds every value fresh on each call:
the official client rewrites NaN inside lists and dicts in place.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

UTC = datetime.timezone.utc
STAMP = datetime.datetime(2024, 1, 2, 3, 4, 5)


class Point:
    """A plain object: the official client sends its attributes as a JSON object."""

    def __init__(self, x: float, y: float) -> None:
        self.x = x
        self.y = y


def _frame_of_types() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": [1, 2, 3],
            "f": [0.5, math.nan, 2.25],
            "b": [True, False, True],
            "s": ["a", None, "c"],
            "when": pd.to_datetime(["2024-01-02 03:04:05", "2024-02-03 00:00:00", "2024-03-04 10:00:00"]),
            "cat": pd.Categorical(["x", "y", "x"]),
        }
    )


SCALARS: dict[str, Callable[[], Any]] = {
    "int": lambda: 7,
    "negative int": lambda: -12,
    "float": lambda: 3.25,
    "bool": lambda: True,
    "str": lambda: 'héllo "quoted"',
    "none": lambda: None,
    "nan": lambda: math.nan,
    "inf": lambda: math.inf,
    "minus inf": lambda: -math.inf,
    "datetime": lambda: STAMP,
    "datetime with microseconds": lambda: datetime.datetime(2024, 1, 2, 3, 4, 5, 120),
    "tz-aware datetime": lambda: datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    "date": lambda: datetime.date(2024, 1, 2),
    "time": lambda: datetime.time(3, 4, 5),
    "timestamp": lambda: pd.Timestamp("2024-01-02 03:04:05.123456789"),
    "tz-aware timestamp": lambda: pd.Timestamp("2024-01-02 03:04:05", tz="Europe/Paris"),
    "timedelta": lambda: pd.Timedelta(seconds=1),
    "numpy int": lambda: np.int64(42),
    "numpy float32": lambda: np.float32(1.5),
    "numpy bool": lambda: np.bool_(True),
    "numpy array": lambda: np.array([[1.0, np.nan], [np.inf, 2.0]]),
    "plain object": lambda: Point(1.0, 2.5),
}

STRUCTURES: dict[str, Callable[[], Any]] = {
    "dict": lambda: {"a": 1, "b": "x", "c": None},
    "dict with nan": lambda: {"a": math.nan, "b": [math.inf, 1.0]},
    "dict with dates": lambda: {"d": datetime.date(2024, 1, 2), "t": STAMP},
    "nested dict": lambda: {"outer": {"inner": [1, {"deep": math.nan}], "when": STAMP}},
    "dict with int keys": lambda: {1: "one", 2: "two"},
    "list": lambda: [1, 2.5, "x", None, True],
    "list with nan": lambda: [math.nan, -math.inf, 1.0],
    "list of dicts": lambda: [{"a": 1}, {"a": 2}],
    "tuple": lambda: (1, "two", 3.0),
    "empty list": lambda: [],
    "empty dict": lambda: {},
    "unicode": lambda: {"名前": "値", "emoji": "🙂"},
}

BATCHES: dict[str, Callable[[], Any]] = {
    "batch rows": lambda: [[1, 10], [2, 20], [3, 30]],
    "batch rows with dicts": lambda: [[1, {"a": 1.5}], [2, {"a": math.nan}]],
    "batch rows with several arguments": lambda: [[1, "a", 2.0], [2, "b", None]],
    "batch rows with string IDs": lambda: [["x-1", 1], ["x-2", 2]],
    "batch rows with dates": lambda: [[1, STAMP], [2, datetime.date(2024, 5, 6)]],
    "batch rows with nested values": lambda: [[1, {"v": [1, [2, {"w": math.inf}]]}], [2, {"v": []}]],
    "batch rows over several chunks": lambda: [[i, {"x": i * 0.5}] for i in range(7)],
}

FRAMES: dict[str, Callable[[], Any]] = {
    "frame of types": _frame_of_types,
    "frame with tz-aware column": lambda: pd.DataFrame(
        {"when": pd.to_datetime(["2024-01-02 03:04:05"], utc=True).tz_convert("America/New_York")}
    ),
    "frame with date objects": lambda: pd.DataFrame({"d": [datetime.date(2024, 1, 2), None]}),
    "frame with timedeltas": lambda: pd.DataFrame({"td": pd.to_timedelta(["1s", "2 days 3h"])}),
    "frame with infinities": lambda: pd.DataFrame({"x": [math.inf, -math.inf, 1.0]}),
    "frame with nested values": lambda: pd.DataFrame({"n": [{"a": [1, 2]}, [1, {"b": None}]]}),
    "frame with string index": lambda: pd.DataFrame({"x": [1, 2]}, index=["r1", "r2"]),
    "frame with non-unique index": lambda: pd.DataFrame({"x": [1, 2, 3]}, index=[5, 5, 6]),
    "frame with datetime index": lambda: pd.DataFrame(
        {"x": [1, 2]}, index=pd.to_datetime(["2024-01-01", "2024-01-02"])
    ),
    "frame with int column names": lambda: pd.DataFrame({0: [1.5], 1: ["a"]}),
    "frame with nullable ints": lambda: pd.DataFrame({"x": pd.array([1, None, 3], dtype="Int64")}),
    "frame over several chunks": lambda: pd.DataFrame({"x": range(7), "y": [f"v{i}" for i in range(7)]}),
    "empty frame": lambda: pd.DataFrame({"x": pd.Series([], dtype="float64")}),
}

# Inputs the provider sends differently on purpose (io/encoding.py, docs/operators.md): the value
# the provider's request carries for each, where the official client sends something else.
DIFFERENCES: dict[str, tuple[Callable[[], Any], Any]] = {
    "frame with NaT": (
        lambda: pd.DataFrame({"t": pd.to_datetime(["2024-01-02 03:04:05", None])}),
        [[0, {"t": "2024-01-02 03:04:05"}], [1, {"t": None}]],
    ),
    "frame with periods": (
        lambda: pd.DataFrame({"p": pd.period_range("2024-01", periods=2, freq="M")}),
        [[0, {"p": "2024-01"}], [1, {"p": "2024-02"}]],
    ),
}

# Chunks of this many rows, for both clients, so "over several chunks" inputs span three requests.
BATCH_SIZE = 3

CORPUS: dict[str, Callable[[], Any]] = {**SCALARS, **STRUCTURES, **BATCHES, **FRAMES}


def all_inputs() -> list[tuple[str, Callable[[], Any]]]:
    """Every input in a fixed order: the position ``i`` is sent with ``timeout_seconds=i + 1``."""
    return [*CORPUS.items(), *((name, make) for name, (make, _) in DIFFERENCES.items())]
