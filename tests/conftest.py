"""Shared fixtures: a real `sipreg serve` process, a real etcd (the helpers they use: tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd_server import ETCD, INSTALL_HINT, EtcdServer
from tests.helpers import RunningRegistrar, serving


@pytest.fixture
def registrar(tmp_path: Path) -> Iterator[RunningRegistrar]:
    """A `sipreg serve` process on fresh loopback ports, serving manifests/."""
    with serving(tmp_path) as running:
        yield running


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
