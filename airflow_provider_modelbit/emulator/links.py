"""
Links mode (§6 and §12.13): results stored on disk and served under signed, expiring URLs.

URLs look like ``<emulator-base>/_links/<token>.json?expires=<unix>&signature=<hex>``; the
signature is an HMAC of the token and expiry under a secret made at start-up, so a URL cannot
be forged or extended. Documents live in a temporary directory, so results of hundreds of
megabytes are streamed from disk rather than kept in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

LINK_PATH_PREFIX = "/_links/"

ACCESS_DENIED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>AccessDenied</Code><Message>{reason}</Message></Error>\n"
)


class LinkRefused(Exception):
    """A link is expired, unknown or badly signed (HTTP 403)."""


@dataclass(frozen=True)
class StoredLink:
    """
    A stored links-mode document.

    :param path: the file holding it.
    :param deployment: the deployment that produced it (for per-deployment faults).
    """

    path: Path
    deployment: str


class LinkStore:
    """Signed, expiring result documents in a temporary directory."""

    def __init__(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="modelbit-emulator-links-"))
        self._secret = secrets.token_bytes(32)
        self._links: dict[str, StoredLink] = {}

    def store(self, encoded: bytes, deployment: str) -> str:
        """Write a document and return its token (called from worker threads)."""
        token = secrets.token_hex(16)
        path = self._directory / f"{token}.json"
        path.write_bytes(encoded)
        self._links[token] = StoredLink(path, deployment)
        return token

    def _signature(self, token: str, expires: int) -> str:
        return hmac.new(self._secret, f"{token}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base_url: str, token: str, expiry_seconds: float) -> str:
        expires = math.ceil(time.time() + expiry_seconds)
        signature = self._signature(token, expires)
        return f"{base_url}{LINK_PATH_PREFIX}{token}.json?expires={expires}&signature={signature}"

    def open(self, path: str, query: str) -> StoredLink:
        """The stored document a request path and query name; raises :class:`LinkRefused`."""
        token = path.removeprefix(LINK_PATH_PREFIX).removesuffix(".json")
        params = parse_qs(query)
        expires_text = params.get("expires", [""])[0]
        signature = params.get("signature", [""])[0]
        if not expires_text.isdigit() or not hmac.compare_digest(
            signature, self._signature(token, int(expires_text))
        ):
            raise LinkRefused(
                "The request signature we calculated does not match the signature you provided."
            )
        if time.time() >= int(expires_text):
            raise LinkRefused("Request has expired")
        stored = self._links.get(token)
        if stored is None or not stored.path.exists():
            raise LinkRefused("The specified key does not exist.")
        return stored

    def clear(self) -> None:
        for stored in self._links.values():
            stored.path.unlink(missing_ok=True)
        self._links.clear()

    def close(self) -> None:
        self._links.clear()
        shutil.rmtree(self._directory, ignore_errors=True)
