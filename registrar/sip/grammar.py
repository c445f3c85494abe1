"""The SIP grammar's small pieces (RFC 3261 section 25): tokens, quoted strings, params, auth-params, list splitting.

Every other module of registrar/sip that reads header text goes through these,
so the rules for quoting, escaping and separators live in exactly one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
WHITESPACE = " \t"


# ;name[=value] where both are tokens (values may also hold ':' and '[]' of IPv6
# and host:port). Anything else goes the careful way, with its precise errors.
_TOKEN_CLASS = "[" + re.escape("".join(sorted(TOKEN_CHARS))) + "]"
_PLAIN_PARAM = re.compile(rf";({_TOKEN_CLASS}+)(=?)((?:{_TOKEN_CLASS}|[:\[\]])*)")
_PLAIN_PARAMS = re.compile(rf"(?:;{_TOKEN_CLASS}+(?:=(?:{_TOKEN_CLASS}|[:\[\]])*)?)*")
# The body of a quoted-string: qdtext and quoted-pairs (a backslash and whatever
# follows it), unrolled ([^"\\] runs between escapes) because the per-character
# alternation (?:[^"\\]|\\.)* is several times slower in re. Possessive
# quantifiers (*+, ++) never give back what they matched: giving back could not
# produce a match where this is used, and not trying keeps a failing match
# linear in the length of the input.
_QUOTED_BODY = r'[^"\\]*+(?:\\.[^"\\]*+)*+'
# A quoted-pair; the character after the backslash is optional so that a
# backslash that ends the text, escaping nothing, is dropped.
_QUOTED_PAIR = re.compile(r"\\(.?)", re.DOTALL)


def is_token(text: str) -> bool:
    return bool(text) and all(c in TOKEN_CHARS for c in text)


def parse_digits(text: str, limit: int) -> int | None:
    """1*DIGIT as an int no larger than `limit` (bigger values come back as `limit`); None if not digits.

    str.isdigit() alone is not enough: it accepts '²' and other Unicode digits
    that int() rejects, and int() refuses numbers of more than 4300 digits;
    either would escape a parser as a bare ValueError instead of a clean error.
    """
    if not text.isascii() or not text.isdigit():
        return None
    if len(text) < 10:
        value = int(text)  # the usual case, far below int()'s digit limit
        return value if value < limit else limit
    text = text.lstrip("0") or "0"
    if len(text) > len(str(limit)):
        return limit
    return min(int(text), limit)


def unquote(text: str) -> str:
    """The content of a quoted-string (RFC 3261 25.1), with quoted-pairs resolved.

    Text that is not quoted is returned stripped, unchanged otherwise.
    """
    text = text.strip(WHITESPACE)
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner
    return text


def quote(text: str) -> str:
    """`text` as a quoted-string: '"' and '\\' escaped, and the control characters a quoted-pair may carry.

    CR and LF cannot be carried at all (a quoted-pair excludes them) and are left
    out: a parsed value never has them, and one that did would end the line.
    """
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    if not text.isprintable():
        text = "".join([f"\\{c}" if c in _ESCAPED_CONTROLS else c for c in text if c not in "\r\n"])
    return f'"{text}"'


# C0 controls and DEL. RFC 3261 25.1 allows none of them in a message head but HTAB
# (as whitespace), CR LF (as a line end), and, in a quoted string, a quoted-pair
# escaping any but CR and LF (RFC 4475 intmeth's To has "\\NUL").
CONTROL_BYTES = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
# As a str.translate table that deletes them.
WITHOUT_CONTROLS = dict.fromkeys(CONTROL_BYTES)
# What a quoted-pair may escape of them: all but CR and LF.
_ESCAPED_CONTROLS = frozenset(map(chr, CONTROL_BYTES)) - {"\r", "\n"}


def unescaped_control(line: str, *, quoted_pairs: bool) -> int:
    """Where `line` (one line of a message head) has a control character that is not HTAB or quoted-pair escaped, or -1.

    `quoted_pairs`: whether quoted strings may escape controls (header lines; not the start line).
    """
    if not quoted_pairs:
        found = _CONTROL.search(line)
        return found.start() if found is not None else -1
    # In C, not character by character in Python: a head of 64 KiB of escaped NULs
    # would otherwise cost 5 ms, a hundred well-formed messages' time.
    end = _WELL_QUOTED.match(line).end()  # type: ignore[union-attr]  # matches the empty string too
    return end if end < len(line) else -1


_CONTROL_CLASS = "".join(f"\\x{byte:02x}" for byte in CONTROL_BYTES)
_CONTROL = re.compile(f"[{_CONTROL_CLASS}]")
# A header line as far as it is free of disallowed controls: what is neither a control nor a
# quote, and quoted strings (the last perhaps unterminated) whose quoted-pairs escape any
# character but CR and LF. Possessive: no backtracking, whatever the line.
_WELL_QUOTED = re.compile(rf'(?:[^"{_CONTROL_CLASS}]++|"(?:[^"\\{_CONTROL_CLASS}]++|\\[^\r\n])*+"?)*+')


def split_outside_quotes(text: str, separator: str, *, angle_brackets: bool = False) -> list[str]:
    """Split on `separator` where it is not inside a quoted string (or <...>).

    Used for comma-separated header lists and semicolon-separated params.
    Parts are returned stripped of surrounding whitespace; empty parts are kept
    so callers can reject them.
    """
    if separator not in text and "\\" not in text and text.count('"') % 2 == 0:
        return [text.strip(WHITESPACE)]  # one value, balanced quotes: the usual header
    if '"' not in text and not (angle_brackets and "<" in text):
        return [part.strip(WHITESPACE) for part in text.split(separator)]
    parts = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif angle_brackets and c == "<":
            in_angle = True
        elif angle_brackets and c == ">":
            in_angle = False
        elif c == separator and not in_angle:
            parts.append(text[start:i].strip(WHITESPACE))
            start = i + 1
        i += 1
    if in_quotes:
        raise ValueError("unterminated quoted string")
    parts.append(text[start:].strip(WHITESPACE))
    return parts


def unterminated_quote(text: str) -> int:
    """Where the quoted string that `text` leaves open starts, or -1 when every one is closed."""
    if '"' not in text:
        return -1
    end = _CLOSED_QUOTES.match(text).end()  # type: ignore[union-attr]  # matches the empty string too
    return end if end < len(text) else -1


# Text whose quoted strings (quoted-pairs in them) are all closed; where it stops, one opens
# that is not. Possessive: linear in the text, whatever it holds.
_CLOSED_QUOTES = re.compile(rf'[^"]*+(?:"{_QUOTED_BODY}"[^"]*+)*+', re.DOTALL)


def parse_params(text: str) -> dict[str, str | None]:
    """Parse `;name=value;flag` (the leading ';' optional) into a dict.

    Names are lower-cased (parameter names are case-insensitive); values keep
    their case and quotes are removed. A flag without '=' maps to None.
    """
    if not text:
        return {}
    if text[0] != ";":
        text = ";" + text
    # The common cases (tokens, no quotes, no spaces) in C-level passes: one
    # parameter (a Via's branch, a Contact's transport) in one, more in two.
    single = _PLAIN_PARAM.fullmatch(text)
    if single is not None:
        name, eq, value = single.groups()
        return {name.lower(): value if eq else None}
    if _PLAIN_PARAMS.fullmatch(text):
        return {name.lower(): value if eq else None for name, eq, value in _PLAIN_PARAM.findall(text)}
    return parse_params_carefully(text)


def parse_params_carefully(text: str) -> dict[str, str | None]:
    """parse_params without its fast paths: quoted values, spaces, and every error."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if text[0] != ";":
        text = ";" + text
    for part in split_outside_quotes(text[1:], ";"):
        if not part:
            raise ValueError("empty parameter")
        name, eq, value = part.partition("=")
        name = name.strip(WHITESPACE).lower()
        if not is_token(name):
            raise ValueError(f"bad parameter name {name!r}")
        params[name] = unquote(value) if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    out = []
    for name, value in params.items():
        if value is None:
            out.append(f";{name}")
        elif value == "" or is_token(value):
            out.append(f";{name}={value}")
        else:
            out.append(f";{name}={quote(value)}")
    return "".join(out)


# --- auth-params: the parameter lists of challenges and credentials -----------------------
#
# challenge / credentials = auth-scheme LWS auth-param *(COMMA auth-param), with
# auth-param = token EQUAL (token / quoted-string) (RFC 3261 25.1). Read leniently
# where UAs need it: a value may be any run of characters but whitespace, '"' and
# ',' (UAs send unquoted URIs, and tokens both quoted and not), and empty list
# elements (", ,") are skipped, as RFC 7230 section 7 asks.

_AUTH_SCHEME = re.compile(rf"\s*+({_TOKEN_CLASS}++)(?:\s++|\Z)")
# A value sent unquoted: anything up to whitespace, a quote or a comma.
_UNQUOTED_VALUE = r'[^\s",]++'
# Picks out one auth-param: name, quoted value or token value, which must be
# followed by a comma or the end. Any other character is captured as junk
# (group 4), so finditer cannot skip anything malformed silently, and stops at the first.
_AUTH_PARAM = re.compile(
    rf'[\s,]*+(?:({_TOKEN_CLASS}++)\s*+=\s*+(?:"({_QUOTED_BODY})"|({_UNQUOTED_VALUE}))(?=\s*+(?:,|\Z))|([^\s,]))',
    re.DOTALL,
)
# The list nearly every UA sends: lower-case name=value pairs joined by ", ",
# quoted values without escapes, token values plain. Such a list is read in two
# C-level passes; the findall pattern is the validating one's element, so it picks
# out exactly the pairs the validation saw. (With no backslash anywhere, a quoted
# body is just "not a quote", which re scans far faster than a class.)
_PLAIN_AUTH_PARAM = re.compile(rf'([a-z]++)=(?:"([^"]*+)"|({_UNQUOTED_VALUE}))')
_PLAIN_AUTH_PARAMS = re.compile(rf"{_PLAIN_AUTH_PARAM.pattern}(?:, {_PLAIN_AUTH_PARAM.pattern})*+")
# Only for explaining a malformed list (the slow path).
_SEPARATORS = re.compile(r"[\s,]*+")
_SPACES = re.compile(r"\s*+")
_TOKEN = re.compile(rf"{_TOKEN_CLASS}++")
_QUOTED_REST = re.compile(rf'{_QUOTED_BODY}"', re.DOTALL)
_AUTH_PARAM_VALUE = re.compile(_UNQUOTED_VALUE)


def auth_scheme(text: str) -> tuple[str, int] | None:
    """The auth-scheme that opens a challenge or credentials value, and where its auth-params start.

    None when `text` does not open (after whitespace) with a token followed by
    whitespace or the end.
    """
    match = _AUTH_SCHEME.match(text)
    return None if match is None else (match[1], match.end())


def plain_auth_params(text: str, start: int) -> dict[str, str] | None:
    """The auth-params of text[start:] by name, when they are in the form nearly every UA sends; else None.

    None also when a name repeats: then `auth_params` reads the list, and the
    caller decides.
    """
    if "\\" in text or not _PLAIN_AUTH_PARAMS.fullmatch(text, start):
        return None
    pairs = _PLAIN_AUTH_PARAM.findall(text, start)
    params = {name: quoted or token for name, quoted, token in pairs}
    return params if len(params) == len(pairs) else None


def auth_params(text: str, start: int = 0) -> Iterator[tuple[str, str]]:
    """The auth-params of text[start:] in order, as (lower-case name, unquoted value).

    Raises ValueError naming what is wrong at the first malformed element, once
    the elements before it have been yielded.
    """
    # finditer, not findall: stopping at the first junk keeps bad input linear.
    for match in _AUTH_PARAM.finditer(text, start):
        name, quoted, token, junk = match.groups()
        if junk is not None:
            raise ValueError(_malformed_auth_params(text, start))
        if token is not None:
            yield name.lower(), token
        elif "\\" in quoted:
            yield name.lower(), _QUOTED_PAIR.sub(r"\1", quoted)
        else:
            yield name.lower(), quoted


def _malformed_auth_params(text: str, pos: int) -> str:
    """Why text[pos:] is not an auth-param list; only called once it is known not to be."""
    end = len(text)
    while True:
        pos = _SEPARATORS.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= end:
            return "malformed parameters"
        name_match = _TOKEN.match(text, pos)
        if name_match is None:
            return "expected a parameter name"
        name = name_match[0][:32]
        pos = _SPACES.match(text, name_match.end()).end()  # type: ignore[union-attr]
        if pos >= end or text[pos] != "=":
            return f"missing = after {name}"
        pos = _SPACES.match(text, pos + 1).end()  # type: ignore[union-attr]
        if pos < end and text[pos] == '"':
            value_match = _QUOTED_REST.match(text, pos + 1)
            if value_match is None:
                return f"unterminated quoted string in {name}"
        else:
            value_match = _AUTH_PARAM_VALUE.match(text, pos)
            if value_match is None:
                return f"missing value for {name}"
        pos = _SPACES.match(text, value_match.end()).end()  # type: ignore[union-attr]
        if pos < end and text[pos] != ",":
            return f"missing comma after {name}"
