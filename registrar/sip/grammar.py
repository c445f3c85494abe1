"""The SIP grammar's small pieces (RFC 3261 section 25): tokens, quoted strings, params, list splitting.

Every other module of registrar/sip that reads header text goes through these,
so the rules for quoting, escaping and separators live in exactly one place.
"""

from __future__ import annotations

import re

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
        if "\\" not in inner:
            return inner
        out = []
        chars = iter(inner)
        for c in chars:
            if c == "\\":
                out.append(next(chars, ""))
            else:
                out.append(c)
        return "".join(out)
    return text


def quote(text: str) -> str:
    """`text` as a quoted-string: '"' and '\\' escaped, and the control characters a quoted-pair may carry.

    CR and LF cannot be carried at all (a quoted-pair excludes them) and are left
    out: a parsed value never has them, and one that did would end the line.
    """
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    if not text.isprintable():
        text = "".join([f"\\{c}" if c in _ESCAPED_CONTROLS else c for c in text if c not in "\r\n"])
    return f'"{text}"'


# Controls but HTAB (whitespace, allowed as it is), CR and LF: RFC 3261 25.1 quoted-pair.
_ESCAPED_CONTROLS = frozenset([*map(chr, range(0x09)), "\x0b", "\x0c", *map(chr, range(0x0E, 0x20)), "\x7f"])


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
_CLOSED_QUOTES = re.compile(r'[^"]*+(?:"(?:[^"\\]++|\\.)*+"[^"]*+)*+', re.DOTALL)


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
