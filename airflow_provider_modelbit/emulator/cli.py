"""
``modelbit-emulator``: run the local Modelbit-compatible server from the command line.

Prints the base URL on a line of its own once it is listening (and writes it to
``--ready-file`` if given), then serves until interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_modelbit.emulator.server import (
    DEFAULT_HOST,
    EmulatorServer,
    collect_for_serving,
    new_event_loop,
)
from airflow_provider_modelbit.emulator.workspace import DEFAULT_MAX_BODY_BYTES, EmulatorConfig, build_config

DESCRIPTION = """\
Local Modelbit-compatible inference server. Serves POST /v1/<deployment>/[<branch>/]<version> with the
built-in example deployments (doubler, echo, versioned, raiser, sleeper, churn_scorer) and any registered
by --deployments; links-mode downloads under /_links/; inspection and fault control under /_emulator/.
"""


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)")
    group.add_argument(
        "--port", type=int, default=8765, help="port to bind; 0 picks a free one (default: %(default)s)"
    )
    group.add_argument("--ready-file", type=Path, help="write the base URL to this file once listening")
    group.add_argument("--deployments", metavar="FILE.py", help="Python file defining register(registry)")
    group.add_argument("--log-level", default="WARNING", help="logging level (default: %(default)s)")


def _add_workspace_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workspace and API keys")
    group.add_argument("--require-api-keys", action="store_true", help="reject requests without an API key")
    group.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a valid API key of the default workspace (repeatable)",
    )
    group.add_argument(
        "--workspace",
        action="append",
        default=[],
        metavar="NAME[=KEY,...]",
        help="an extra workspace chosen by the leftmost Host label; with keys it requires them",
    )


def _add_behaviour_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("behaviour")
    # The newest Modelbit docs sort batch results by ID; older revisions answered in request order.
    group.add_argument(
        "--results-in-request-order",
        dest="sort_results_by_id",
        action="store_false",
        help="answer batches in request order, as older docs did",
    )
    group.add_argument(
        "--sort-results-by-id",
        action="store_true",
        default=True,
        help="answer batches sorted by ID, as the newest docs say (the default)",
    )
    group.add_argument(
        "--link-expiry-seconds",
        type=float,
        default=3600,
        help="links-mode URL lifetime (default: %(default)s)",
    )
    group.add_argument(
        "--webhook-time-scale",
        type=float,
        default=1.0,
        help="factor on webhook retry waits 1,2,4,8,16 s (default: %(default)s)",
    )
    group.add_argument(
        "--webhook-timeout-seconds",
        type=float,
        default=10.0,
        help="webhook receiver answer limit (default: %(default)s)",
    )
    group.add_argument(
        "--allow-http-webhooks", action="store_true", help="accept http:// webhook URLs (local receivers)"
    )
    group.add_argument(
        "--deployment-error-status",
        type=int,
        choices=(200, 400, 500),
        default=200,
        help="status of deployment exceptions (default: %(default)s)",
    )
    group.add_argument(
        "--timeout-status",
        type=int,
        choices=(200, 504),
        default=200,
        help="status of inference timeouts (default: %(default)s)",
    )


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits")
    group.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="bodies above this get 413 (default: %(default)s)",
    )
    group.add_argument(
        "--max-inflight-requests", type=int, help="concurrent inference requests allowed; more get 429"
    )
    group.add_argument(
        "--max-inflight-bytes", type=int, help="body bytes of concurrent requests allowed; more get 429"
    )
    group.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="NAME=N[:DEPLOYMENT,...]",
        help="named per-minute limit of N requests, for the listed deployments or all (repeatable)",
    )


# Fault settings that inject something when non-zero: (setting, type, help).
FAULT_TRIGGERS: tuple[tuple[str, type, str], ...] = (
    ("error_rate", float, "rate of injected 5xx answers (statuses from --error-statuses)"),
    ("rate_429", float, "rate of injected 429 answers with Retry-After"),
    ("drop_before_rate", float, "rate of connections closed before the model runs"),
    ("drop_after_rate", float, "rate of connections closed after the model ran"),
    ("latency_seconds", float, "added latency per inference request"),
    ("model_seconds", float, "time per request, compute included, holding its in-flight place"),
    ("model_seconds_per_row", float, "time the model takes per batch row, on top of --model-seconds"),
    ("truncate_link_rate", float, "rate of link downloads cut short"),
    ("truncate_link_first", int, "cut the first N downloads of every link short"),
    ("webhook_duplicate_rate", float, "rate of webhook deliveries sent twice"),
    ("webhook_delay_seconds", float, "delay before the first webhook attempt"),
)


def _add_fault_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "fault injection (also settable at run time: /_emulator/faults/settings)"
    )
    for setting, value_type, help_text in FAULT_TRIGGERS:
        group.add_argument(
            "--" + setting.replace("_", "-"), type=value_type, default=value_type(0), help=help_text
        )
    group.add_argument("--webhook-reorder", action="store_true", help="deliver webhooks out of order")
    group.add_argument(
        "--error-statuses", default="503", help="comma-separated, from 500,502,503 (default: 503)"
    )
    group.add_argument("--retry-after", type=int, default=1, help="Retry-After of injected 429 (default: 1)")
    group.add_argument("--fault-deployment", help="apply the fault options to this deployment only")
    group.add_argument("--fault-seed", type=int, default=0, help="seed of fault decisions (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelbit-emulator", description=DESCRIPTION)
    for add_options in (
        _add_server_options,
        _add_workspace_options,
        _add_behaviour_options,
        _add_limit_options,
        _add_fault_options,
    ):
        add_options(parser)
    return parser


def _workspaces(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    workspaces: dict[str, dict[str, Any]] = {}
    for value in values:
        name, _, keys = value.partition("=")
        key_list = [key for key in keys.split(",") if key]
        workspaces[name.lower()] = {"require_api_keys": bool(key_list), "api_keys": key_list}
    return workspaces


def _rate_limits(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    limits: dict[str, dict[str, Any]] = {}
    for value in values:
        name, _, rest = value.partition("=")
        count, _, deployments = rest.partition(":")
        if not name or not count.isdigit():
            raise ValueError(
                f"--rate-limit {value!r} must look like NAME=N or NAME=N:deployment1,deployment2."
            )
        limits[name] = {"per_minute": int(count), "deployments": [d for d in deployments.split(",") if d]}
    return limits


def _faults(args: argparse.Namespace) -> dict[str, Any] | None:
    """Fault settings from the command line, or None when nothing would be injected."""
    triggers = {setting: getattr(args, setting) for setting, _, _ in FAULT_TRIGGERS}
    if not any(triggers.values()) and not args.webhook_reorder:
        return None
    return {
        **triggers,
        "webhook_reorder": args.webhook_reorder,
        "error_statuses": [int(status) for status in args.error_statuses.split(",") if status],
        "retry_after": args.retry_after,
        "seed": args.fault_seed,
        "deployment": args.fault_deployment,
    }


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return build_config(
        require_api_keys=args.require_api_keys,
        api_keys=args.api_key,
        workspaces=_workspaces(args.workspace),
        sort_results_by_id=args.sort_results_by_id,
        link_expiry_seconds=args.link_expiry_seconds,
        webhook_time_scale=args.webhook_time_scale,
        webhook_timeout_seconds=args.webhook_timeout_seconds,
        allow_http_webhooks=args.allow_http_webhooks,
        deployment_error_status=args.deployment_error_status,
        timeout_status=args.timeout_status,
        max_body_bytes=args.max_body_bytes,
        max_inflight_requests=args.max_inflight_requests,
        max_inflight_bytes=args.max_inflight_bytes,
        rate_limits=_rate_limits(args.rate_limit),
        deployments_file=args.deployments,
        faults=_faults(args),
    )


async def serve(config: EmulatorConfig, host: str, port: int, ready_file: Path | None) -> None:
    """Serve until SIGINT or SIGTERM."""
    server = EmulatorServer(config, host, port)
    url = await server.start()
    print(url, flush=True)
    if ready_file is not None:
        # Written aside and renamed, so whoever waits for the file never reads it half-written.
        partial = ready_file.with_name(f"{ready_file.name}.partial")
        partial.write_text(url + "\n")
        os.replace(partial, ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal_number, stop.set)
    await server.serve_until(stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as invalid:
        print(f"modelbit-emulator: {invalid}", file=sys.stderr)
        return 2
    collect_for_serving()
    loop = new_event_loop()
    try:
        loop.run_until_complete(serve(config, args.host, args.port, args.ready_file))
    except (ValueError, OSError) as error:
        print(f"modelbit-emulator: cannot start: {error}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0
