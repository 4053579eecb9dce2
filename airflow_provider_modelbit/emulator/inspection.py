"""
Emulator-only routes under ``/_emulator/`` (§12.16): inspection and run-time control.

Real Modelbit has none of these; the provider never calls them. Routes:

=========  ================================  ==========================================================
method     path                              answer
=========  ================================  ==========================================================
GET        /_emulator/health                 ``{"status": "ok"}``
GET        /_emulator/requests               recorded requests (API keys redacted)
GET        /_emulator/runs/{deployment}      ``{row ID: times the model ran it}``
GET        /_emulator/batches                async batches with their webhook attempts
GET        /_emulator/batches/{batchId}      one async batch
GET        /_emulator/faults                 injected faults: kind, path, deployment, time
GET        /_emulator/faults/counts          ``{kind: count}``
GET        /_emulator/faults/settings        the current fault settings
PUT|POST   /_emulator/faults/settings        set fault settings (body: settings + ``deployment``)
DELETE     /_emulator/faults/settings        clear all fault settings
GET        /_emulator/config                 the current options (keys masked)
POST       /_emulator/config                 change options (body: option names and values)
GET        /_emulator/deployments            registered deployments, branches, versions, aliases
POST       /_emulator/reset                  let requests being served finish; forget records; restore options
=========  ================================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from airflow_provider_modelbit.emulator.encoding import error_body
from airflow_provider_modelbit.emulator.faults import FaultSettings
from airflow_provider_modelbit.emulator.http import HttpRequest, HttpResponse
from airflow_provider_modelbit.emulator.workspace import config_as_json

if TYPE_CHECKING:
    from airflow_provider_modelbit.emulator.app import EmulatorApp

INSPECTION_PREFIX = "/_emulator/"

Route = Callable[["EmulatorApp", HttpRequest, str], Any]


def _json(value: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(value, default=str))


def _body_object(request: HttpRequest) -> dict[str, Any]:
    try:
        document = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError as error:
        raise ValueError(f"Body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError("Body must be a JSON object.")
    return document


def _set_faults(app: EmulatorApp, request: HttpRequest, _: str) -> Any:
    settings = _body_object(request)
    deployment = settings.pop("deployment", None)
    app.faults.set(FaultSettings.from_json(settings), deployment)
    return app.faults.settings_as_json()


def _clear_faults(app: EmulatorApp, _request: HttpRequest, _: str) -> Any:
    app.faults.clear()
    return app.faults.settings_as_json()


def _configure(app: EmulatorApp, request: HttpRequest, _: str) -> Any:
    app.configure(**_body_object(request))
    return config_as_json(app.config)


async def _reset(app: EmulatorApp, _request: HttpRequest, _: str) -> Any:
    await app.reset()
    return {"status": "reset"}


def _batch(app: EmulatorApp, _request: HttpRequest, batch_id: str) -> Any:
    batch = app.recorder.batches.get(batch_id)
    if batch is None:
        raise LookupError(f"No async batch {batch_id!r} was recorded.")
    return batch


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "health"): lambda app, request, _: {"status": "ok"},
    ("GET", "requests"): lambda app, request, _: app.recorder.requests(),
    ("GET", "runs"): lambda app, request, deployment: app.recorder.runs_of(deployment),
    ("GET", "batches"): lambda app, request, batch_id: (
        _batch(app, request, batch_id) if batch_id else list(app.recorder.batches.values())
    ),
    ("GET", "faults"): lambda app, request, _: app.faults.records(),
    ("GET", "faults/counts"): lambda app, request, _: app.faults.counts(),
    ("GET", "faults/settings"): lambda app, request, _: app.faults.settings_as_json(),
    ("PUT", "faults/settings"): _set_faults,
    ("POST", "faults/settings"): _set_faults,
    ("DELETE", "faults/settings"): _clear_faults,
    ("GET", "config"): lambda app, request, _: config_as_json(app.config),
    ("POST", "config"): _configure,
    ("GET", "deployments"): lambda app, request, _: app.registry.describe(),
    ("POST", "reset"): _reset,
}

PARAMETERISED = ("runs", "batches")


def _route_key(path: str) -> tuple[str, str]:
    """Split ``runs/doubler`` into (``runs``, ``doubler``); other paths have no parameter."""
    relative = path[len(INSPECTION_PREFIX) :].strip("/")
    head, _, rest = relative.partition("/")
    if head in PARAMETERISED:
        return head, rest
    return relative, ""


async def answer_inspection(app: EmulatorApp, request: HttpRequest) -> HttpResponse:
    """Answer one ``/_emulator/`` request."""
    name, parameter = _route_key(request.path)
    route = ROUTES.get((request.method, name))
    if route is None:
        known = any(route_name == name for _, route_name in ROUTES)
        status = 405 if known else 404
        return HttpResponse(status, error_body(f"No emulator route {request.method} {request.path}."))
    try:
        result = route(app, request, parameter)
        if isinstance(result, Awaitable):
            result = await result
    except LookupError as missing:
        return HttpResponse(404, error_body(str(missing)))
    except (ValueError, TypeError) as invalid:
        return HttpResponse(400, error_body(str(invalid)))
    return _json(result)
