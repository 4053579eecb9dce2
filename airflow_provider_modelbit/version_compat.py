"""Names whose home moved between the Airflow releases the provider supports (3.1 to 3.3)."""

from __future__ import annotations

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1: the configuration is not re-exported by the Task SDK yet
    from airflow.configuration import conf  # type: ignore[assignment]

try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.1: the task runner still catches the core class
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

try:
    from airflow.sdk.bases.decorator import determine_kwargs
except ImportError:  # Airflow 3.1: still in the core's operator helpers
    from airflow.utils.operator_helpers import determine_kwargs

try:
    from airflow.sdk.exceptions import AirflowTaskTimeout
except ImportError:  # Airflow 3.1 keeps it in airflow.exceptions
    from airflow.exceptions import AirflowTaskTimeout  # type: ignore[no-redef]

__all__ = ["AirflowFailException", "AirflowTaskTimeout", "conf", "determine_kwargs"]
