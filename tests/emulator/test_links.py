"""Links mode (§6, §12.13): signed, expiring, streamed result documents."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airflow_provider_modelbit.emulator import RunningEmulator, run_emulator
from airflow_provider_modelbit.emulator.links import LinkRefused, LinkStore


class TestLinkStore:
    """Signatures and expiry, without HTTP."""

    @pytest.fixture
    def store(self) -> Iterator[LinkStore]:
        store = LinkStore()
        yield store
        store.close()

    def test_signed_url_opens(self, store: LinkStore) -> None:
        token = store.store(b"[1]", "echo")
        url = store.url("http://emulator", token, 60)
        path, query = url.removeprefix("http://emulator").split("?")
        assert store.open(path, query).path.read_bytes() == b"[1]"

    @pytest.mark.parametrize(
        ("mutate", "reason"),
        [
            (lambda q: q.replace("signature=", "signature=0"), "signature"),
            (lambda q: q.replace("expires=", "expires=9"), "signature"),
            (lambda q: q.split("&")[0], "signature"),
        ],
    )
    def test_tampered_url_is_refused(self, store: LinkStore, mutate, reason: str) -> None:
        token = store.store(b"[1]", "echo")
        path, query = store.url("", token, 60).split("?")
        with pytest.raises(LinkRefused, match=reason):
            store.open(path, mutate(query))

    def test_expired_url_is_refused(self, store: LinkStore) -> None:
        token = store.store(b"[1]", "echo")
        path, query = store.url("", token, 0.001).split("?")
        time.sleep(1.1)
        with pytest.raises(LinkRefused, match="expired"):
            store.open(path, query)


class TestLinksRoute:
    """The emulator returns a link instead of data, and serves it without auth."""

    @pytest.mark.parametrize(
        ("data", "document"),
        [(10, b"20"), ([[1, 10], [2, 11]], b"[[1,20],[2,22]]")],
    )
    def test_link_document_is_the_data_value(
        self, http: httpx.Client, emulator: RunningEmulator, data: object, document: bytes
    ) -> None:
        emulator.client.configure(require_api_keys=True)
        response = http.post(
            emulator.url + "/v1/doubler/latest",
            json={"data": data, "response_format": "links"},
            headers={"authorization": "k1"},
        )
        link = response.json()["data"]
        assert link.startswith(emulator.url + "/_links/") and "expires=" in link and "signature=" in link
        download = http.get(link)
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("application/json")
        assert download.content == document

    def test_errors_are_never_links(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        body = http.post(
            emulator.url + "/v1/raiser/latest", json={"data": 1, "response_format": "links"}
        ).json()
        assert list(body) == ["error"]

    def test_bad_signature_is_403_xml(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        link = http.post(
            emulator.url + "/v1/doubler/latest", json={"data": 1, "response_format": "links"}
        ).json()["data"]
        response = http.get(link[:-4] + "0000")
        assert response.status_code == 403
        assert "AccessDenied" in response.text

    def test_expiry_is_configurable(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.configure(link_expiry_seconds=1)
        link = http.post(
            emulator.url + "/v1/doubler/latest", json={"data": 1, "response_format": "links"}
        ).json()["data"]
        assert http.get(link).status_code == 200
        time.sleep(2.1)
        assert http.get(link).status_code == 403

    def test_post_to_link_is_405(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        link = http.post(
            emulator.url + "/v1/doubler/latest", json={"data": 1, "response_format": "links"}
        ).json()["data"]
        assert http.post(link).status_code == 405


BIG_DEPLOYMENT = """
def big(size):
    return "x" * size


def register(registry):
    registry.add("big", big)
"""


@pytest.mark.slow
def test_200_mb_document_is_streamed_from_disk(tmp_path: Path) -> None:
    """A ~200 MB link document is stored on disk and downloaded in a stream, complete."""
    deployments = tmp_path / "big.py"
    deployments.write_text(BIG_DEPLOYMENT)
    size = 200 * 2**20
    with (
        run_emulator(deployments_file=str(deployments)) as server,
        httpx.Client(trust_env=False, timeout=120) as http,
    ):
        link = http.post(
            server.url + "/v1/big/latest", json={"data": size, "response_format": "links"}
        ).json()["data"]
        received = 0
        with http.stream("GET", link) as response:
            assert int(response.headers["content-length"]) == size + 2
            for chunk in response.iter_raw():
                received += len(chunk)
        assert received == size + 2
