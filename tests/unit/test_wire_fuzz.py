"""The receive path on fuzzed SIP (tests/fuzzing.py): nothing escapes, every answer parses, no message meets a bug.

A few hundred messages here, shrunk by Hypothesis to the smallest that fails;
`make bench` runs the same property over 100,000 (bench/fuzz.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzzing import ReceivePath, messages


@pytest.fixture(scope="module")
def receive_path() -> Iterator[ReceivePath]:
    path = ReceivePath()
    yield path
    path.close()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=messages())
def test_no_fuzzed_message_escapes_the_receive_path(receive_path: ReceivePath, data: bytes) -> None:
    receive_path.check(data)
