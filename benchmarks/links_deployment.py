"""Deployments the benchmarks add to the local server (loaded with ``deployments_file``).

``embedder`` returns a 64-number vector per row: the kind of wide result that is fetched in links
mode, and a cheap way to make a large linked document from a small request. ``scorer_1`` to
``scorer_4`` answer as ``echo`` does; the latency-bound runs give each its own model time, quota
and run counts, so clients running at once can be told apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_modelbit.emulator.deployments import DeploymentRegistry

EMBEDDING_WIDTH = 64
SCORERS = 4
_BASIS = tuple(0.015625 * (index + 1) for index in range(EMBEDDING_WIDTH))


def embedder(seed: float) -> list[float]:
    """A deterministic 64-number vector for ``seed``."""
    return [seed * weight for weight in _BASIS]


def register(registry: DeploymentRegistry) -> None:
    from airflow_provider_modelbit.emulator.deployments import echo

    registry.add("embedder", embedder)
    for number in range(1, SCORERS + 1):
        registry.add(f"scorer_{number}", echo)
