"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.kube_apiserver import FakeApiServer


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    """A Kubernetes API server on 127.0.0.1 speaking list/watch (see tests/kube_apiserver.py)."""
    server = FakeApiServer()
    await server.start()
    yield server
    await server.stop()
