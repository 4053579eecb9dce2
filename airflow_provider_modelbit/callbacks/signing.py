"""Signed webhook URLs: an HMAC-SHA256 token binds a URL to one job, one chunk and an expiry.

Modelbit posts results to whatever URL it is given, so the URL itself is the credential. The
token signs ``job_id``, ``chunk`` and ``expires_at`` with the connection's ``callback_secret``;
a token copied into another job's or chunk's URL, or used after it expires, does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from urllib.parse import quote, urlencode

from airflow_provider_modelbit.exceptions import ModelbitCallbackError, ModelbitConnectionError

#: Job ids become directory names in the store and path segments in URLs, so they are restricted.
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
TOKEN_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MIN_SECRET_LENGTH = 16
MAX_CHUNK = 10_000_000


class InvalidToken(ModelbitCallbackError):
    """A webhook URL's token is forged, expired or does not belong to the job and chunk it was used for."""


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` unchanged, or raise :class:`ValueError` when it cannot be a store folder name."""
    if not JOB_ID_PATTERN.match(job_id) or ".." in job_id:
        raise ValueError(
            f"Invalid callback job id {job_id!r}: use 1-128 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit."
        )
    return job_id


def validate_chunk(chunk: int) -> int:
    """Return ``chunk`` unchanged, or raise :class:`ValueError` when it is not a chunk number."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 0 <= chunk < MAX_CHUNK:
        raise ValueError(f"Invalid callback chunk number {chunk!r}: expected an integer 0-{MAX_CHUNK - 1}.")
    return chunk


def check_secret(secret: str | None, conn_id: str) -> str:
    """Return ``secret`` when it is usable for signing; the error names the connection, never the value."""
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        raise ModelbitConnectionError(
            f"Connection {conn_id!r} has no usable callback secret: set the extra 'callback_secret' to a "
            f"random string of at least {MIN_SECRET_LENGTH} characters (the same value on every Airflow "
            "component that signs or receives Modelbit webhooks)."
        )
    return secret


def sign_token(secret: str, job_id: str, chunk: int, expires_at: int) -> str:
    """Return the hex HMAC-SHA256 token for one job, chunk and expiry (unix seconds)."""
    message = f"modelbit-callback\n{validate_job_id(job_id)}\n{validate_chunk(chunk)}\n{int(expires_at)}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def verify_token(
    secret: str, token: str, job_id: str, chunk: int, expires_at: int, now: float | None = None
) -> None:
    """
    Raise :class:`InvalidToken` unless ``token`` signs this job, chunk and a still-valid expiry.

    The comparison runs in constant time so response timing reveals nothing about the expected token.
    """
    if not TOKEN_PATTERN.match(token):
        raise InvalidToken("Callback token is malformed: expected 64 lowercase hex characters.")
    expected = sign_token(secret, job_id, chunk, expires_at)
    if not hmac.compare_digest(expected, token):
        raise InvalidToken(f"Callback token does not match job {job_id!r}, chunk {chunk}.")
    if (time.time() if now is None else now) > expires_at:
        raise InvalidToken(f"Callback URL for job {job_id!r}, chunk {chunk} expired at {expires_at}.")


def callback_url(base_url: str, conn_id: str, job_id: str, chunk: int, secret: str, expires_at: int) -> str:
    """
    Build the signed webhook URL for one chunk of a job.

    ``base_url`` is where Modelbit reaches the receiver, including the ``/modelbit`` prefix when
    the receiver is mounted in the Airflow api-server.
    """
    if not CONN_ID_PATTERN.match(conn_id):
        raise ValueError(f"Connection id {conn_id!r} cannot be used in a callback URL.")
    token = sign_token(secret, job_id, chunk, expires_at)
    path = f"/v1/callbacks/{quote(conn_id)}/{job_id}/{chunk}"
    query = urlencode({"expires": int(expires_at), "token": token})
    return f"{base_url.rstrip('/')}{path}?{query}"
