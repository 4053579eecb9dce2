"""Triggers."""

from __future__ import annotations

from airflow_provider_modelbit.triggers.callback import ModelbitCallbackTrigger

__all__ = ["ModelbitCallbackTrigger"]
