"""The callback store's commands.

``modelbit-callback-receiver``: the webhook receiver as its own small web server, for
deployments whose api-server is not reachable from the internet. It binds 127.0.0.1 by default
(put a TLS-terminating proxy in front of it) and resolves connections like any Airflow process,
including ``AIRFLOW_CONN_*`` environment variables.

``modelbit-callback-cleanup``: remove the jobs and tombstones nothing wrote to for
``[modelbit] callback_retention_seconds``, e.g. from cron where no receiver runs.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

from airflow_provider_modelbit.callbacks.receiver import (
    DEFAULT_MAX_BODY_BYTES,
    ConnectionSecretSource,
    create_callback_app,
)
from airflow_provider_modelbit.callbacks.store import CallbackStore, callback_retention_seconds
from airflow_provider_modelbit.defaults import DEFAULT_CONN_ID
from airflow_provider_modelbit.hooks.responses import redact_tokens

DEFAULT_PORT = 8794
#: The levels offered; uvicorn's "trace" is left out because it logs whole requests, tokens included.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class RedactCallbackTokens(logging.Filter):
    """
    Replace callback tokens in every record a handler emits: uvicorn's access log prints each
    request line, and a callback URL's ``token=`` query parameter is a credential.

    The arguments are redacted one by one rather than folded into the message, because
    uvicorn's access formatter reads them (client, method, path, version, status) by position.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_tokens(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_tokens(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def log_config(level: str) -> dict[str, Any]:
    """
    Return uvicorn's logging configuration with tokens redacted on every handler.

    The provider's own loggers (one line per delivery at ``info``) go to the same handler.
    """
    config = copy.deepcopy(uvicorn_logging_config())
    config["filters"] = {"redact_callback_tokens": {"()": RedactCallbackTokens}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_callback_tokens"]
    config["loggers"]["airflow_provider_modelbit"] = {
        "handlers": ["default"], "level": level.upper(), "propagate": False,
    }  # fmt: skip
    # Anything else that warns (Airflow's connection lookup, fsspec) passes the same filter.
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def uvicorn_logging_config() -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``modelbit-callback-receiver``."""
    parser = argparse.ArgumentParser(
        prog="modelbit-callback-receiver",
        description="Receive Modelbit webhook deliveries and store them for the waiting Airflow tasks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one")
    parser.add_argument(
        "--store", default=None, help="callback store location (default: [modelbit] callback_store)"
    )
    parser.add_argument(
        "--conn-id",
        action="append",
        dest="conn_ids",
        help="accept deliveries for this connection only (repeatable; default: [modelbit] callback_conn_id)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--ready-file", default=None, help="write the listening URL here once ready")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=LOG_LEVELS,
        help="warning (default) logs problems; info adds one line per request and per delivery",
    )
    return parser


def _default_conn_ids() -> list[str]:
    from airflow_provider_modelbit.version_compat import conf

    return [conf.get("modelbit", "callback_conn_id", fallback=DEFAULT_CONN_ID) or DEFAULT_CONN_ID]


def _write_ready_file(path: str, url: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as ready:
        ready.write(url + "\n")
    os.replace(temporary, path)


async def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    app = create_callback_app(
        store=CallbackStore(args.store),
        secrets=ConnectionSecretSource(frozenset(args.conn_ids or _default_conn_ids())),
        max_body_bytes=args.max_body_bytes,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=log_config(args.log_level),
        lifespan="off",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if server.started and args.ready_file:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        _write_ready_file(args.ready_file, f"http://{host}:{port}")
    await serving


def main(argv: Sequence[str] | None = None) -> None:
    """Run the stand-alone receiver until interrupted."""
    args = build_parser().parse_args(argv)
    asyncio.run(_serve(args))


def build_cleanup_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``modelbit-callback-cleanup``."""
    parser = argparse.ArgumentParser(
        prog="modelbit-callback-cleanup",
        description="Remove callback jobs, deliveries and tombstones nothing wrote to for a while.",
    )
    parser.add_argument(
        "--store", default=None, help="callback store location (default: [modelbit] callback_store)"
    )
    parser.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="SECONDS",
        help="age to expire (default: [modelbit] callback_retention_seconds, 7 days)",
    )
    return parser


def cleanup_main(argv: Sequence[str] | None = None) -> None:
    """Expire the callback store once and say what was removed."""
    parser = build_cleanup_parser()
    args = parser.parse_args(argv)
    if args.older_than is not None and args.older_than <= 0:
        parser.error(f"--older-than must be a positive number of seconds, got {args.older_than!r}.")
    older_than = args.older_than or callback_retention_seconds()
    store = CallbackStore(args.store)
    report = store.expire(older_than)
    print(f"Removed {report} older than {older_than:.0f} s from {store.location}.")


if __name__ == "__main__":
    main()
