"""``modelbit-callback-receiver``: the webhook receiver as its own small web server.

For deployments whose api-server is not reachable from the internet. It binds 127.0.0.1 by
default (put a TLS-terminating proxy in front of it) and resolves connections like any Airflow
process, including ``AIRFLOW_CONN_*`` environment variables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

from airflow_provider_modelbit.callbacks.receiver import (
    DEFAULT_MAX_BODY_BYTES,
    ConnectionSecretSource,
    create_callback_app,
)
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.defaults import DEFAULT_CONN_ID

DEFAULT_PORT = 8794


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
    parser.add_argument("--log-level", default="warning")
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
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="off")
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


if __name__ == "__main__":
    main()
