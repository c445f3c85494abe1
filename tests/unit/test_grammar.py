"""Unit tests for registrar.sip.grammar: the parameter parser's fast paths agree with the careful one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrar.sip import grammar
from registrar.sip.grammar import parse_params, parse_params_carefully

_NAMES = st.sampled_from(["branch", "transport", "lr", "Tag", "rport", "received", "x-y", "", "a b", "é"])
_VALUES = st.one_of(
    st.none(),
    st.text(alphabet="azAZ09.-_!~*'%+`:[]", max_size=8),
    st.text(alphabet='az09 ";=,\\\t', max_size=6),
)


def _text(params: list[tuple[str, str | None]], leading: bool) -> str:
    text = "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params)
    return text if leading else text[1:]


def _outcome(parse, text):
    try:
        return parse(text)
    except ValueError as error:
        return f"ValueError: {error}"


@settings(max_examples=600, deadline=None)
@given(params=st.lists(st.tuples(_NAMES, _VALUES), max_size=4), leading=st.booleans())
def test_the_fast_paths_give_what_the_careful_parser_gives(params, leading) -> None:
    text = _text(params, leading)
    assert _outcome(parse_params, text) == _outcome(parse_params_carefully, text)


@pytest.mark.parametrize(
    "text", [";branch=z9hG4bK-1-2", ";transport=UDP", ";lr", ";branch=z9hG4bKx;rport", "transport=tcp;lr"]
)
def test_plain_parameters_take_the_fast_paths(text, monkeypatch) -> None:
    monkeypatch.setattr(grammar, "parse_params_carefully", lambda text: pytest.fail(f"fell back on {text!r}"))
    assert parse_params(text)


@pytest.mark.parametrize("text", [';tag="a b"', ";a = b", ";;a", ";a=b;", ";é=1"])
def test_the_rest_falls_back(text, monkeypatch) -> None:
    careful = parse_params_carefully
    calls = []
    monkeypatch.setattr(grammar, "parse_params_carefully", lambda text: calls.append(text) or careful(text))
    assert _outcome(parse_params, text) == _outcome(careful, text)
    assert calls == [text]
