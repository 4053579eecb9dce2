"""The Asset an operator's Parquet output updates: one rule for both operators.

An operator given ``asset=`` declares it as an outlet (so DAGs scheduled on it run on fresh
scores) and, once the output is written, attaches ``{"path", "rows"}`` to the asset event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

if TYPE_CHECKING:
    from airflow.sdk import Context


def as_asset(asset: Asset | str) -> Asset:
    """Return ``asset``, or the Asset of that URI."""
    return asset if isinstance(asset, Asset) else Asset(asset)


def with_asset_outlet(kwargs: dict[str, Any], asset: Asset | str | None) -> dict[str, Any]:
    """Return the operator keyword arguments with ``asset`` added to its ``outlets``."""
    if asset is None:
        return kwargs
    return {**kwargs, "outlets": [*(kwargs.get("outlets") or []), as_asset(asset)]}


def announce_output(context: Context, asset: Asset | None, path: str, rows: int) -> None:
    """Attach the written output's path and row count to the asset event of this task."""
    if asset is None:
        return
    outlet_events = context.get("outlet_events")
    if outlet_events is not None:
        outlet_events[asset].extra = {"path": path, "rows": rows}
