"""Fixtures of the integration tests that start several processes: registrar replicas on one etcd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.etcd_server import EtcdServer
from tests.helpers import MANIFESTS, RunningRegistrar, start_registrar, stop_registrar

# Replicas verify each other's nonces only when they share this.
NONCE_SECRET = "replicas-share-this"


@pytest.fixture
def replicas(tmp_path: Path, etcd: EtcdServer) -> Iterator[Callable[..., RunningRegistrar]]:
    """Starts registrars on `etcd`; all are stopped (and checked for tracebacks) at the end."""
    started: list[RunningRegistrar] = []

    def start(manifests: Path | None = MANIFESTS, node: str | None = None) -> RunningRegistrar:
        extra = ["--store", etcd.url, "--nonce-secret", NONCE_SECRET]
        if node:
            extra += ["--node", node]
        running = start_registrar(tmp_path, *extra, manifests=manifests)
        started.append(running)
        return running

    yield start
    for running in started:
        stop_registrar(running)
    for running in started:
        assert "Traceback" not in running.log(), running.log()
