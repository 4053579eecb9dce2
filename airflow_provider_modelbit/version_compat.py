"""Names whose home moved between the Airflow releases the provider supports (3.1 to 3.3)."""

from __future__ import annotations

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1: the configuration is not re-exported by the Task SDK yet
    from airflow.configuration import conf  # type: ignore[assignment]

__all__ = ["conf"]
