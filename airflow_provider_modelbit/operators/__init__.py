"""
Operators of the Modelbit provider.

Each operator is imported on first access, so a DAG that uses one operator does not pay for
the other's imports, and a problem in one module does not hide the other.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
    from airflow_provider_modelbit.operators.inference import ModelbitInferenceOperator

_MODULE_OF = {
    "ModelbitInferenceOperator": "airflow_provider_modelbit.operators.inference",
    "ModelbitBatchInferenceOperator": "airflow_provider_modelbit.operators.batch",
}

__all__ = ["ModelbitBatchInferenceOperator", "ModelbitInferenceOperator"]


def __getattr__(name: str) -> Any:
    module_name = _MODULE_OF.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
