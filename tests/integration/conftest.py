"""Fixtures of the integration tests: a real etcd (see tests/etcd_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd_server import ETCD, INSTALL_HINT, EtcdServer


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A started single-member etcd on fresh loopback ports, stopped after the test whatever its outcome.

    No etcd on PATH fails the test rather than skipping it: `make test` (and so CI) installs Debian's
    etcd-server, and a skip would hide that the etcd store went untested.
    """
    if ETCD is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with EtcdServer(tmp_path) as server:
        yield server
