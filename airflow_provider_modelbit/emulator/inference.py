"""
The inference route ``POST /v1/...``: synchronous and asynchronous requests (§1-§9).

Order of checks: method, body size, workspace key, deployment path, body, injected faults,
limits; then the model runs in a worker thread under ``timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from airflow_provider_modelbit.emulator.deployments import MAIN_BRANCH, DeploymentNotFound, DeploymentVersion
from airflow_provider_modelbit.emulator.encoding import data_body, error_body
from airflow_provider_modelbit.emulator.envelope import InferenceEnvelope, RequestRejected, parse_envelope
from airflow_provider_modelbit.emulator.execution import InferenceOutcome, run_inference
from airflow_provider_modelbit.emulator.faults import GATEWAY_PAGE, FaultPlan
from airflow_provider_modelbit.emulator.http import DROP_CONNECTION, HttpRequest, HttpResponse, Reply
from airflow_provider_modelbit.emulator.workspace import check_api_key, workspace_for_host

if TYPE_CHECKING:
    from airflow_provider_modelbit.emulator.app import EmulatorApp

INFERENCE_PREFIX = "/v1/"


def rejection_response(rejected: RequestRejected) -> HttpResponse:
    headers = () if rejected.retry_after is None else (("retry-after", str(rejected.retry_after)),)
    return HttpResponse(rejected.status, error_body(rejected.message), headers=headers)


def parse_inference_path(path: str) -> tuple[str, str, str]:
    """``/v1/{d}/{version}`` or ``/v1/{d}/{branch}/{version}`` to (deployment, branch, version)."""
    segments = path[len(INFERENCE_PREFIX) :].split("/")
    if len(segments) == 2 and all(segments):
        return segments[0], MAIN_BRANCH, segments[1]
    if len(segments) == 3 and all(segments):
        return segments[0], segments[1].replace("~", "/"), segments[2]
    raise RequestRejected(
        404,
        f"Deployment not found: {path!r} is not /v1/<deployment>/<version> "
        "or /v1/<deployment>/<branch>/<version>.",
    )


def _resolve(app: EmulatorApp, path: str) -> DeploymentVersion:
    name, branch, version = parse_inference_path(path)
    try:
        return app.registry.resolve(name, branch, version)
    except DeploymentNotFound as missing:
        raise RequestRejected(404, str(missing)) from None


def _authorize_and_parse(
    app: EmulatorApp, request: HttpRequest, record: dict[str, Any]
) -> tuple[DeploymentVersion, InferenceEnvelope]:
    if request.method != "POST":
        raise RequestRejected(405, f"Method not allowed: inference takes POST, not {request.method}.")
    if request.body_too_large:
        raise RequestRejected(413, f"Request too large: the body exceeds {app.config.max_body_bytes} bytes.")
    workspace, options = workspace_for_host(app.config, request.headers.get("host"))
    record["workspace"] = workspace
    check_api_key(options, request.headers.get("authorization"))
    target = _resolve(app, request.path)
    record.update(deployment=target.deployment, branch=target.branch, version=target.version)
    envelope = parse_envelope(request.body, allow_http_webhooks=app.config.allow_http_webhooks)
    record.update(mode="async" if envelope.is_async else ("batch" if envelope.is_batch else "single"))
    record["rows"] = envelope.row_count
    return target, envelope


async def _injected_fault(
    app: EmulatorApp, plan: FaultPlan | None, path: str, deployment: str
) -> Reply | None:
    """The answer of a fault injected before the model runs, if one is drawn."""
    if plan is None:
        return None
    settings = plan.settings
    if settings.latency_seconds > 0:
        app.faults.record("latency", path, deployment, seconds=settings.latency_seconds)
        await asyncio.sleep(settings.latency_seconds)
    if plan.roll(settings.rate_429):
        app.faults.record("rate_429", path, deployment)
        message = "RateLimitExceeded: Concurrency request count limit reached"
        return HttpResponse(429, error_body(message), headers=(("retry-after", str(settings.retry_after)),))
    if plan.roll(settings.error_rate):
        status = plan.error_status()
        app.faults.record(f"error_{status}", path, deployment)
        if status == 502:
            return HttpResponse(502, GATEWAY_PAGE, content_type="text/html")
        return HttpResponse(status, error_body(f"Injected {status} error; the model did not run."))
    if plan.roll(settings.drop_before_rate):
        app.faults.record("drop_before", path, deployment)
        return DROP_CONNECTION
    return None


def _drop_after(app: EmulatorApp, plan: FaultPlan | None, path: str, deployment: str) -> bool:
    if plan is not None and plan.roll(plan.settings.drop_after_rate):
        app.faults.record("drop_after", path, deployment)
        return True
    return False


async def run_model(
    app: EmulatorApp, target: DeploymentVersion, envelope: InferenceEnvelope
) -> InferenceOutcome:
    """
    Run the deployment in a worker thread, stopped waiting for at ``timeout_seconds``.

    A fault plan's model time is the whole time the request is served: the deployment's own
    compute counts towards it, and only what is left of it is waited out after, so a request holds
    its in-flight place for the model time however busy this server is.
    """
    if envelope.is_batch:
        app.recorder.count_runs(target.deployment, [row[0] for row in envelope.data])
    plan = app.faults.plan_for(target.deployment)
    model_time = plan.model_time(envelope.row_count or 1) if plan is not None else 0.0
    started = time.monotonic()
    future = asyncio.wrap_future(
        app.workers.submit(run_inference, target, envelope, app.config.sort_results_by_id)
    )
    try:
        outcome = await asyncio.wait_for(future, envelope.timeout_seconds)
    except TimeoutError:
        # Modelbit restarts the instance that timed out: the next request is a cold start.
        app.cold_instances.add((target.deployment, target.branch, target.version))
        message = f"Timeout: inference exceeded {envelope.timeout_seconds} seconds"
        return InferenceOutcome(error=message, timed_out=True)
    # Spent here rather than in a worker thread: many requests may take time at once.
    await asyncio.sleep(max(0.0, model_time - (time.monotonic() - started)))
    return outcome


async def result_body(
    app: EmulatorApp,
    target: DeploymentVersion,
    envelope: InferenceEnvelope,
    outcome: InferenceOutcome,
    base_url: str,
) -> tuple[int, bytes, str]:
    """Status, body and result kind (data, link or error) of a finished inference."""
    if outcome.error is not None:
        status = app.config.timeout_status if outcome.timed_out else app.config.deployment_error_status
        return status, error_body(outcome.error), "error"
    assert outcome.encoded is not None
    if not envelope.links:
        return 200, data_body(outcome.encoded), "data"
    token = await asyncio.wrap_future(app.workers.submit(app.links.store, outcome.encoded, target.deployment))
    url = app.links.url(base_url, token, app.config.link_expiry_seconds)
    return 200, orjson.dumps({"data": url}), "link"


def _note_cold_start(app: EmulatorApp, target: DeploymentVersion, record: dict[str, Any]) -> None:
    key = (target.deployment, target.branch, target.version)
    record["cold_start"] = key in app.cold_instances
    app.cold_instances.discard(key)


async def _answer_sync(
    app: EmulatorApp,
    request: HttpRequest,
    target: DeploymentVersion,
    envelope: InferenceEnvelope,
    plan: FaultPlan | None,
) -> Reply:
    size = len(request.body)
    caps = (app.config.max_inflight_requests, app.config.max_inflight_bytes)
    app.limits.admit_sync(target.deployment, size, app.config.rate_limits, caps)
    try:
        outcome = await run_model(app, target, envelope)
    finally:
        app.limits.inflight.release(size)
    if _drop_after(app, plan, request.path, target.deployment):
        return DROP_CONNECTION
    status, body, _ = await result_body(app, target, envelope, outcome, app.base_url_for(request))
    return HttpResponse(status, body)


async def _run_async_batch(
    app: EmulatorApp,
    target: DeploymentVersion,
    envelope: InferenceEnvelope,
    batch: dict[str, Any],
    base_url: str,
    size: int,
) -> None:
    caps = (app.config.max_inflight_requests, app.config.max_inflight_bytes)
    await app.limits.admit_queued(target.deployment, size, app.config.rate_limits, caps)
    batch["state"] = "running"
    try:
        outcome = await run_model(app, target, envelope)
    except RequestRejected as rejected:
        outcome = InferenceOutcome(error=rejected.message)
    finally:
        app.limits.inflight.release(size)
    _, body, batch["result"] = await result_body(app, target, envelope, outcome, base_url)
    await app.webhooks.deliver(batch, body, envelope.webhook_ignore_timeout)


def _start_async(
    app: EmulatorApp, request: HttpRequest, target: DeploymentVersion, envelope: InferenceEnvelope
) -> HttpResponse:
    batch_id = uuid.uuid4().hex
    batch = app.recorder.new_batch(
        batch_id,
        deployment=target.deployment,
        branch=target.branch,
        version=target.version,
        webhook_url=envelope.webhook_url,
        rows=envelope.row_count,
    )
    app.spawn(_run_async_batch(app, target, envelope, batch, app.base_url_for(request), len(request.body)))
    return HttpResponse(200, orjson.dumps({"batchId": batch_id}), headers=(("x-mb-batch-id", batch_id),))


async def _answer(app: EmulatorApp, request: HttpRequest, record: dict[str, Any]) -> Reply:
    target, envelope = _authorize_and_parse(app, request, record)
    _note_cold_start(app, target, record)
    plan = app.faults.plan_for(target.deployment)
    injected = await _injected_fault(app, plan, request.path, target.deployment)
    if injected is not None:
        return injected
    if not envelope.is_async:
        return await _answer_sync(app, request, target, envelope, plan)
    accepted = _start_async(app, request, target, envelope)
    record["batchId"] = accepted.headers[0][1]
    # A dropped answer to an accepted async request: the batch runs, the client never learns its ID.
    return DROP_CONNECTION if _drop_after(app, plan, request.path, target.deployment) else accepted


async def answer_inference(app: EmulatorApp, request: HttpRequest, record: dict[str, Any]) -> Reply:
    """Answer one ``/v1/`` request."""
    try:
        return await _answer(app, request, record)
    except RequestRejected as rejected:
        return rejection_response(rejected)
