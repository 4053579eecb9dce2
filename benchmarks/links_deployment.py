"""Deployments the benchmarks add to the local server (loaded with ``deployments_file``).

``embedder`` returns a 64-number vector per row: the kind of wide result that is fetched in links
mode, and a cheap way to make a large linked document from a small request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_modelbit.emulator.deployments import DeploymentRegistry

EMBEDDING_WIDTH = 64
_BASIS = tuple(0.015625 * (index + 1) for index in range(EMBEDDING_WIDTH))


def embedder(seed: float) -> list[float]:
    """A deterministic 64-number vector for ``seed``."""
    return [seed * weight for weight in _BASIS]


def register(registry: DeploymentRegistry) -> None:
    registry.add("embedder", embedder)
