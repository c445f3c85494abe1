"""What the tests share: test doubles and small helpers (no test module imports another)."""

from __future__ import annotations

import hashlib

# The domain of the tests' catalogues (manifests/ serves it too).
DOMAIN = "sip.example.test"


class FakeClock:
    """A clock that stands still until told: a mutable float, callable like time.time."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def authorization(
    username: str,
    password: str,
    nonce: str,
    nc: int,
    *,
    realm: str = DOMAIN,
    uri: str = f"sip:{DOMAIN}",
    cnonce: str = "0a4f113b",
    method: str = "REGISTER",
) -> str:
    """An Authorization value per RFC 2617 3.2.2 (MD5, qop=auth), computed with hashlib."""
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    nc_text = f"{nc:08x}"
    response = md5(f"{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc={nc_text}'
    )
