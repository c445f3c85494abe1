"""Unit tests for registrar.sip.grammar: the parameter parser's fast paths agree with the careful one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrar.sip import grammar
from registrar.sip.grammar import parse_params, parse_params_carefully
from tests.helpers import pure_python_only

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


@pure_python_only
@pytest.mark.parametrize(
    "text", [";branch=z9hG4bK-1-2", ";transport=UDP", ";lr", ";branch=z9hG4bKx;rport", "transport=tcp;lr"]
)
def test_plain_parameters_take_the_fast_paths(text, monkeypatch) -> None:
    monkeypatch.setattr(grammar, "parse_params_carefully", lambda text: pytest.fail(f"fell back on {text!r}"))
    assert parse_params(text)


@pure_python_only
@pytest.mark.parametrize("text", [';tag="a b"', ";a = b", ";;a", ";a=b;", ";é=1"])
def test_the_rest_falls_back(text, monkeypatch) -> None:
    careful = parse_params_carefully
    calls = []
    monkeypatch.setattr(grammar, "parse_params_carefully", lambda text: calls.append(text) or careful(text))
    assert _outcome(parse_params, text) == _outcome(careful, text)
    assert calls == [text]


@pytest.mark.parametrize(
    ("text", "opened"),
    [('a="b"', -1), ('x="abc', 2), ('"a\\"b', 0), ('"a\\\\"b"', 6), ("a\\\"b", 2), ("plain", -1), ('"\\', 0)],
)
def test_unterminated_quote_finds_the_quoted_string_left_open(text: str, opened: int) -> None:
    assert grammar.unterminated_quote(text) == opened


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='ab"\\,;<> ', max_size=12))
def test_a_quote_is_left_open_exactly_when_a_list_cannot_be_split(text: str) -> None:
    opened = grammar.unterminated_quote(text)
    try:
        grammar.split_outside_quotes(text, ",", angle_brackets=True)
        splits = True
    except ValueError:
        splits = False
    assert splits == (opened < 0)
    if opened >= 0:  # what salvage_request echoes: cut there, it splits
        grammar.split_outside_quotes(text[:opened], ",", angle_brackets=True)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x80), max_size=12))
def test_a_quoted_value_reads_back_and_carries_its_control_characters_as_quoted_pairs(text: str) -> None:
    from registrar.sip.message import parse_message

    carried = text.replace("\r", "").replace("\n", "")  # a quoted-pair cannot carry CR or LF
    assert grammar.parse_params_carefully(";x=" + grammar.quote(carried)) == {"x": carried}
    assert grammar.quote(text) == grammar.quote(carried)
    # The parser takes a header with it: no control character in it but quoted-pairs (and HTAB).
    message = parse_message(
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;x={grammar.quote(text)}\r\nCSeq: 1 OPTIONS\r\n\r\n".encode()
    )
    assert message.top_via.params["x"] == carried


_AUTH_PARAM_LISTS = st.lists(
    st.tuples(st.sampled_from(["realm", "nonce", "qop", "Realm", "x-y", "a b", ""]),
              st.text(alphabet='az09:@", \\\t', max_size=6), st.booleans()),
    max_size=4,
).map(lambda params: ", ".join(f'{name}="{value}"' if quoted else f"{name}={value}" for name, value, quoted in params))


def _auth_params(text: str) -> dict[str, str] | str:
    """What auth_params reads, as plain_auth_params would give it: a dict, or the error."""
    try:
        pairs = list(grammar.auth_params(text))
    except ValueError as error:
        return f"ValueError: {error}"
    return dict(pairs) if len(dict(pairs)) == len(pairs) else "repeated"


@settings(max_examples=600, deadline=None)
@given(_AUTH_PARAM_LISTS)
def test_plain_auth_params_read_what_the_careful_reader_reads(text: str) -> None:
    plain = grammar.plain_auth_params(text, 0)
    if plain is not None:
        assert plain == _auth_params(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('realm="a", nonce=b', {"realm": "a", "nonce": "b"}),
        ('realm="a", realm="b"', None),  # the caller decides what a repeated name means
        ('realm="a\\"b"', None),  # an escape
        ('Realm="a"', None),
        ('realm="a",nonce=b', None),
    ],
)
def test_plain_auth_params_take_only_the_usual_form(text: str, expected: dict[str, str] | None) -> None:
    assert grammar.plain_auth_params(text, 0) == expected


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ('Digest realm = "a\\"b" ,, NONCE=sip:x@y , ', [("realm", 'a"b'), ("nonce", "sip:x@y")]),
        ('Digest realm="a", =b', "expected a parameter name"),
        ('Digest realm="a" nonce=b', "missing comma after realm"),
        ('Digest realm="a, nonce=b', "unterminated quoted string in realm"),
    ],
)
def test_auth_params_unquote_and_name_the_first_fault(text: str, read: list[tuple[str, str]] | str) -> None:
    scheme = grammar.auth_scheme(text)
    assert scheme is not None and scheme[0] == "Digest"
    try:
        assert list(grammar.auth_params(text, scheme[1])) == read
    except ValueError as error:
        assert str(error) == read
