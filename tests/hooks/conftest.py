"""Fixtures of the hook tests: hooks bound to a local server, and a scripted HTTP server.

The scripted server answers canned responses for protocol variants the Modelbit emulator never
produces (an HTML gateway page, ``Retry-After`` as an HTTP date, a batchId only in the header,
a link server that records request headers). It is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.hooks.modelbit_async import ModelbitAsyncHook
from airflow_provider_modelbit.hooks.retries import RetryPolicy
from tests.scripted_http import forwarding_proxy, scripted_server  # noqa: F401  (fixtures of these tests)

FAST_RETRIES = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=2.0, max_total_wait=10.0)


@pytest.fixture
def hook_for(modelbit_connection) -> Callable[..., ModelbitHook]:
    """Build a sync hook whose connection points at ``url`` (fast retries unless told otherwise)."""

    def build(
        url: str, *, password: str | None = None, extra: dict | None = None, **hook_args
    ) -> ModelbitHook:
        modelbit_connection(host=url, password=password, extra=extra)
        hook_args.setdefault("retry_policy", FAST_RETRIES)
        return ModelbitHook(**hook_args)

    return build


@pytest.fixture
def async_hook_for(modelbit_connection) -> Callable[..., ModelbitAsyncHook]:
    """Build an async hook whose connection points at ``url`` (fast retries unless told otherwise)."""

    def build(url: str, *, password: str | None = None, **hook_args) -> ModelbitAsyncHook:
        modelbit_connection(host=url, password=password)
        hook_args.setdefault("retry_policy", FAST_RETRIES)
        return ModelbitAsyncHook(**hook_args)

    return build


@pytest.fixture
def emulator(modelbit_emulator_session):
    """The session's Modelbit emulator, with records, faults and options reset around each test."""
    modelbit_emulator_session.client.reset()
    yield modelbit_emulator_session
    modelbit_emulator_session.client.reset()
