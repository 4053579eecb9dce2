"""Airflow plugin that mounts the Modelbit callback receiver in the api-server under ``/modelbit``.

Plugins are loaded by every Airflow process (scheduler, workers, triggerer), so importing this
module only defines classes: the FastAPI app is built the first time the api-server asks for
``fastapi_apps``, and it reads no connection or store until a delivery arrives.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

CALLBACK_URL_PREFIX = "/modelbit"


class _LazyCallbackApps:
    """Class attribute that builds the receiver app on first access and then returns the same list."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            from airflow_provider_modelbit.callbacks.receiver import create_callback_app

            self._apps = [
                {
                    "app": create_callback_app(),
                    "url_prefix": CALLBACK_URL_PREFIX,
                    "name": "Modelbit callback receiver",
                }
            ]
        return self._apps


class ModelbitCallbackPlugin(AirflowPlugin):
    """
    Receive Modelbit webhook deliveries in the Airflow api-server.

    Deliveries arrive at ``<api-server>/modelbit/v1/callbacks/<conn_id>/<job_id>/<chunk>``; set the
    Modelbit connection's ``callback_base_url`` to the public URL of ``<api-server>/modelbit``.
    Where the api-server cannot be reached from the internet, run ``modelbit-callback-receiver``
    instead and point ``callback_base_url`` at it.
    """

    name = "modelbit"
    fastapi_apps = _LazyCallbackApps()
