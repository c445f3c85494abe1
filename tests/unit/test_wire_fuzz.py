"""The receive path on fuzzed SIP (tests/fuzzing.py): nothing escapes, every answer parses, no message meets a bug.

A few hundred messages here, shrunk by Hypothesis to the smallest that fails;
`make bench` runs the same property over 100,000 (bench/fuzz.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrar.sip.digest import parse_credentials
from registrar.sip.grammar import parse_params, unquote
from registrar.sip.headers import parse_cseq, parse_delta_seconds, parse_name_addr, parse_via, split_list
from registrar.sip.uri import parse_uri
from tests.fuzzing import NASTY, ReceivePath, messages


@pytest.fixture(scope="module")
def receive_path() -> Iterator[ReceivePath]:
    path = ReceivePath()
    yield path
    path.close()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=messages())
def test_no_fuzzed_message_escapes_the_receive_path(receive_path: ReceivePath, data: bytes) -> None:
    receive_path.check(data)


_HEADER_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from([nasty.decode("utf-8", "surrogateescape") for nasty in NASTY if len(nasty) < 100]),
             max_size=6).map("".join),
)


@settings(max_examples=500, deadline=None)
@given(text=_HEADER_TEXT)
def test_the_header_parsers_raise_nothing_but_value_error(text: str) -> None:
    # What Message's accessors turn into SipError 400 naming the header: nothing else may escape.
    for parse in (parse_via, parse_name_addr, parse_uri, parse_params, split_list, unquote, parse_cseq,
                  parse_delta_seconds, parse_credentials):
        try:
            parse(text)
        except ValueError:  # URIError and DigestError are ValueErrors
            pass
