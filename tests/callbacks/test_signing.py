"""Signed webhook URLs: tokens bind one job, one chunk and an expiry."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_modelbit.callbacks.signing import (
    InvalidToken,
    callback_url,
    check_secret,
    sign_token,
    validate_job_id,
    verify_token,
)
from airflow_provider_modelbit.exceptions import ModelbitCallbackError, ModelbitConnectionError

SECRET = "s3cret-s3cret-s3cret"
EXPIRES = 2_000_000_000


class TestSignToken:
    def test_token_is_64_hex_characters_and_deterministic(self) -> None:
        token = sign_token(SECRET, "job-1", 3, EXPIRES)
        assert len(token) == 64
        assert token == sign_token(SECRET, "job-1", 3, EXPIRES)

    @pytest.mark.parametrize(
        ("job_id", "chunk", "expires", "secret"),
        [
            ("job-2", 3, EXPIRES, SECRET),
            ("job-1", 4, EXPIRES, SECRET),
            ("job-1", 3, EXPIRES + 1, SECRET),
            ("job-1", 3, EXPIRES, SECRET + "x"),
        ],
    )
    def test_each_signed_field_changes_the_token(self, job_id: str, chunk: int, expires: int, secret: str):
        """Changing the job, chunk, expiry or secret yields a different token."""
        assert sign_token(secret, job_id, chunk, expires) != sign_token(SECRET, "job-1", 3, EXPIRES)


class TestVerifyToken:
    def test_accepts_its_own_token_before_expiry(self) -> None:
        verify_token(SECRET, sign_token(SECRET, "job-1", 0, EXPIRES), "job-1", 0, EXPIRES, now=EXPIRES - 1)

    @pytest.mark.parametrize(
        ("token_for", "checked_as", "now", "reason"),
        [
            (("job-1", 0, EXPIRES), ("job-2", 0, EXPIRES), EXPIRES - 1, "does not match"),
            (("job-1", 0, EXPIRES), ("job-1", 1, EXPIRES), EXPIRES - 1, "does not match"),
            (("job-1", 0, EXPIRES), ("job-1", 0, EXPIRES + 60), EXPIRES - 1, "does not match"),
            (("job-1", 0, EXPIRES), ("job-1", 0, EXPIRES), EXPIRES + 1, "expired"),
        ],
    )
    def test_rejects_other_job_chunk_extended_expiry_and_expired(self, token_for, checked_as, now, reason):
        """A token used for another job or chunk, with a stretched expiry, or too late, is refused."""
        token = sign_token(SECRET, *token_for)
        with pytest.raises(InvalidToken, match=reason):
            verify_token(SECRET, token, *checked_as, now=now)

    @pytest.mark.parametrize("token", ["", "abc", "Z" * 64, "A" * 64, "0" * 63])
    def test_rejects_malformed_tokens(self, token: str) -> None:
        with pytest.raises(InvalidToken, match="malformed"):
            verify_token(SECRET, token, "job-1", 0, EXPIRES, now=0)

    def test_invalid_token_is_a_callback_error_without_the_secret(self) -> None:
        with pytest.raises(ModelbitCallbackError) as caught:
            verify_token(SECRET, "0" * 64, "job-1", 0, EXPIRES, now=0)
        assert SECRET not in str(caught.value)


class TestCallbackUrl:
    def test_url_shape_carries_conn_job_chunk_expiry_and_token(self) -> None:
        url = callback_url(
            "https://airflow.example.com/modelbit/", "modelbit_default", "job-1", 7, SECRET, EXPIRES
        )
        parts = urlsplit(url)
        assert parts.path == "/modelbit/v1/callbacks/modelbit_default/job-1/7"
        query = parse_qs(parts.query)
        assert query["expires"] == [str(EXPIRES)]
        assert query["token"] == [sign_token(SECRET, "job-1", 7, EXPIRES)]
        assert SECRET not in url


class TestValidation:
    @pytest.mark.parametrize("job_id", ["", "../etc", "a/b", "-lead", "x" * 129, "a..b"])
    def test_job_ids_that_cannot_be_folder_names_are_refused(self, job_id: str) -> None:
        with pytest.raises(ValueError, match="Invalid callback job id"):
            validate_job_id(job_id)

    @pytest.mark.parametrize("secret", [None, "", "short"])
    def test_missing_or_short_secret_names_the_connection(self, secret: str | None) -> None:
        with pytest.raises(ModelbitConnectionError, match=r"'my_conn'.*callback_secret"):
            check_secret(secret, "my_conn")
