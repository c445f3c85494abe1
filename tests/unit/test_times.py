"""Unit tests for registrar.times: RFC 3339 text as Kubernetes writes it, and read back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from registrar.times import rfc3339, unix_seconds


def test_rfc3339_is_utc_to_the_second_with_a_z() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000.9) == "2023-11-14T22:13:20Z"


def test_an_offset_is_read_as_well_as_a_z() -> None:
    assert unix_seconds("2023-11-14T23:13:20+01:00") == unix_seconds("2023-11-14T22:13:20Z") == 1_700_000_000


@given(st.integers(min_value=0, max_value=2**33))
def test_whole_seconds_read_back(seconds: int) -> None:
    assert unix_seconds(rfc3339(seconds)) == seconds
