"""Results bound for XCom, measured as JSON and refused past a limit, links included.

XCom lives in Airflow's metadata database, so a result larger than the task's ``max_xcom_bytes``
fails the task with advice (write Parquet instead) rather than bloating it. A result that arrives
through links is counted while it downloads, so a huge document stops at the limit rather than
after it has been read whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from airflow_provider_modelbit.exceptions import ModelbitError
from airflow_provider_modelbit.io.links import read_link_value

if TYPE_CHECKING:
    from airflow_provider_modelbit.hooks.responses import InferenceCall


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON, as XCom would store it."""
    return len(orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY))


def refuse_oversized(size: int, limit: int, *, call: InferenceCall) -> None:
    """
    Refuse a result of ``size`` bytes of JSON when it is over ``limit``.

    :param call: the call whose result it is: its deployment, version and branch are named.
    :raises ModelbitError: naming the call and what to do instead.
    """
    if size > limit:
        raise ModelbitError(
            f"{call.where}: the result is over {limit} bytes of JSON, too large to return through XCom. "
            "Set output_path to write it as Parquet (or raise max_xcom_bytes).",
            deployment=call.deployment,
            version=call.version,
        )


def read_links_within(
    read_link: Callable[[str, Callable[[Iterator[bytes]], Any]], Any],
    urls: Iterable[str],
    limit: int,
    *,
    call: InferenceCall,
) -> list[Any]:
    """
    Download each results link and return its value, stopping as soon as the total passes ``limit``.

    :param read_link: fetches a link and hands its body to a consumer (``ModelbitHook.read_link``);
        a link fetched again after a broken download is counted once.
    :param urls: the links, in input order.
    :param limit: most bytes downloaded in total.
    :param call: the call whose results the links hold, named in errors.
    :raises ModelbitError: the downloads passed ``limit``.
    """
    meter = _DownloadMeter(limit, call=call)
    values = []
    for url in urls:
        before = meter.total

        def consume(stream: Iterator[bytes], before: int = before) -> Any:
            meter.total = before  # a link fetched again is counted once
            return read_link_value(
                meter.count(stream),
                source=f"{call.where}: the results link",
                deployment=call.deployment,
                version=call.version,
            )

        values.append(read_link(url, consume))
    return values


class _DownloadMeter:
    """Count the bytes of one or more downloads, refusing them once past ``limit``."""

    def __init__(self, limit: int, *, call: InferenceCall) -> None:
        self._limit = limit
        self._call = call
        self.total = 0

    def count(self, stream: Iterable[bytes]) -> Iterator[bytes]:
        """Yield ``stream``'s pieces, adding their size to the total."""
        for piece in stream:
            self.total += len(piece)
            refuse_oversized(self.total, self._limit, call=self._call)
            yield piece
