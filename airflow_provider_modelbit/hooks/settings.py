"""What a Modelbit Connection says: workspace URL, API key, default branch and timeout, callbacks.

Secrets are registered with Airflow's log masker the moment they are read, and no ``repr`` of
:class:`ModelbitSettings` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk.log import mask_secret

from airflow_provider_modelbit.defaults import ASYNC_TIMEOUT_LIMIT, DEFAULT_BRANCH
from airflow_provider_modelbit.exceptions import ModelbitConnectionError

if TYPE_CHECKING:
    from airflow.sdk import Connection


@dataclass(frozen=True)
class ModelbitSettings:
    """
    The resolved settings of one Modelbit Connection.

    :param conn_id: the Airflow connection id the settings come from.
    :param base_url: workspace URL without a trailing slash, e.g. ``https://acme.us-east-2.aws.modelbit.com``.
    :param api_key: the raw API key sent in ``Authorization``, or ``None`` when the workspace needs none.
    :param branch: branch used when a call names none.
    :param timeout_seconds: inference time limit used when a call sets none.
    :param callback_base_url: public URL at which Modelbit reaches the callback receiver.
    :param callback_secret: secret signing webhook URLs.
    """

    conn_id: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    branch: str = DEFAULT_BRANCH
    timeout_seconds: int | None = None
    callback_base_url: str | None = None
    callback_secret: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        key = "***" if self.api_key else None
        secret = "***" if self.callback_secret else None
        return (
            f"ModelbitSettings(conn_id={self.conn_id!r}, base_url={self.base_url!r}, api_key={key!r}, "
            f"branch={self.branch!r}, timeout_seconds={self.timeout_seconds!r}, "
            f"callback_base_url={self.callback_base_url!r}, callback_secret={secret!r})"
        )


def workspace_url(workspace: str, region: str, outpost: str | None = None) -> str:
    """Build a workspace URL the way Modelbit names its hosts."""
    parts = [workspace, outpost, region] if outpost else [workspace, region]
    return "https://" + ".".join(part.strip(".") for part in parts) + ".modelbit.com"


def settings_from_connection(
    conn: Connection, conn_id: str, extra: dict[str, Any] | None = None
) -> ModelbitSettings:
    """
    Read a Modelbit Connection into :class:`ModelbitSettings`, masking its secrets first.

    :param conn: the Airflow connection.
    :param conn_id: its id, for error messages.
    :param extra: the connection's extras when already read (the async path reads them without blocking).
    """
    extra = dict(conn.extra_dejson if extra is None else extra)
    api_key = conn.password or None
    _mask(api_key, extra.get("callback_secret"))
    return ModelbitSettings(
        conn_id=conn_id,
        base_url=_base_url(conn, extra, conn_id),
        api_key=api_key,
        branch=str(extra.get("branch") or DEFAULT_BRANCH),
        timeout_seconds=_timeout(extra.get("timeout_seconds"), conn_id),
        callback_base_url=extra.get("callback_base_url") or None,
        callback_secret=extra.get("callback_secret") or None,
    )


def _mask(*secrets: str | None) -> None:
    # The Authorization header carries the raw key, so masking the key masks the header value too.
    for secret in secrets:
        if secret:
            mask_secret(secret)


def _base_url(conn: Connection, extra: dict[str, Any], conn_id: str) -> str:
    host = (conn.host or "").strip()
    if host:
        url = _url_from_host(host, conn.port, str(extra.get("scheme") or "https"))
    elif extra.get("workspace") and extra.get("region"):
        url = workspace_url(str(extra["workspace"]), str(extra["region"]), extra.get("outpost") or None)
    else:
        raise ModelbitConnectionError(
            f"Connection {conn_id!r} has no workspace URL: set Host (Workspace URL), e.g. "
            "https://acme.us-east-2.aws.modelbit.com, or the extras 'workspace' and 'region'."
        )
    _check_url(url, conn_id)
    return url.rstrip("/")


def _url_from_host(host: str, port: int | None, scheme: str) -> str:
    url = host if "://" in host else f"{scheme}://{host}"
    parts = urlsplit(url)
    if port and parts.port is None and parts.hostname:
        url = parts._replace(netloc=f"{parts.netloc}:{port}").geturl()
    return url


def _check_url(url: str, conn_id: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelbitConnectionError(
            f"Connection {conn_id!r} has an unusable workspace URL {url!r}: set Host to a full URL such as "
            "https://acme.us-east-2.aws.modelbit.com or http://127.0.0.1:8080."
        )


def _timeout(value: Any, conn_id: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        seconds = 0
    # 900 s is the most either mode allows; synchronous calls cap a longer default to 300 s.
    if not 0 < seconds <= ASYNC_TIMEOUT_LIMIT or str(seconds) != str(value).strip():
        raise ModelbitConnectionError(
            f"Connection {conn_id!r} has timeout_seconds={value!r}; set a whole number of seconds (1-900)."
        )
    return seconds
