"""A connection's trace from every replica: each node's recent messages over its HTTP API, merged in time order.

Where the replicas are comes from the node registry in etcd (each node's
`address` and `httpPort`), never from Kubernetes: a registrar pod needs no
access to the API server for this, and `sipreg trace --store` none either.
A node that does not answer in time is named in the result, not waited for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from registrar.sip.trace import Captured, TraceRecorder, from_json, merged, to_json
from registrar.sip.uri import bracketed

# How long a node has to answer, and the most one answer may hold: a node keeps at most
# TraceLimits.bytes_per_connection of a connection (in base64, a third more, plus the JSON).
NODE_TIMEOUT = 3.0
MAX_NODE_ANSWER = 4 * 1024 * 1024


@dataclass
class Gathered:
    """What the nodes answered: their messages merged, who answered, who did not and why."""

    messages: list[Captured] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)

    def to_json(self, key: str) -> dict[str, Any]:
        return {"key": key, "messages": [to_json(captured) for captured in self.messages],
                "nodes": self.answered, "unreachable": self.unreachable}


class TraceGatherer:
    """Asks every node in `nodes()` (node name -> its registry record) for a key's trace.

    `recorder` is this node's own, read in place; None for a gatherer outside any node
    (`sipreg trace --store`). Every node's API takes the same bearer `token`.
    """

    def __init__(
        self,
        nodes: Callable[[], Mapping[str, Mapping[str, Any]]],
        token: str,
        recorder: TraceRecorder | None = None,
        timeout: float = NODE_TIMEOUT,
    ):
        self._nodes = nodes
        self._token = token
        self._recorder = recorder
        self._timeout = timeout

    def local(self, key: str, since: float = 0.0) -> Gathered:
        """This node's messages only (what another node's `gather` asks for)."""
        if self._recorder is None:
            return Gathered()
        return Gathered(self._recorder.messages(key, since), [self._recorder.node])

    async def gather(self, key: str, since: float = 0.0) -> Gathered:
        gathered = self.local(key, since)
        others = {name: record for name, record in self._nodes().items()
                  if name not in gathered.answered and may_hold(record, key)}
        traces = [gathered.messages]
        if others:
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                answers = await asyncio.gather(
                    *(self._ask(session, record, key, since) for record in others.values()), return_exceptions=True
                )
            for name, answer in zip(others, answers):
                if isinstance(answer, BaseException):
                    gathered.unreachable[name] = _why(answer)
                else:
                    traces.append(answer)
                    gathered.answered.append(name)
        gathered.messages = merged(traces)
        gathered.answered.sort()
        return gathered

    async def _ask(self, session: aiohttp.ClientSession, record: Mapping[str, Any], key: str,
                   since: float) -> list[Captured]:
        if record.get("httpPort") is None:
            raise LookupError("serves no HTTP API")
        return (await ask(session, node_url(record), self._token, key, since, scope="node")).messages


async def ask(
    session: aiohttp.ClientSession, api: str, token: str, key: str, since: float, scope: str | None = None,
    most_bytes: int = MAX_NODE_ANSWER,
) -> Gathered:
    """One registrar API's answer for `key`'s trace (`scope` "node": its own part only); LookupError says
    why there is none (an HTTP error, an answer too large or not a trace)."""
    url = f"{api.rstrip('/')}/api/v1/trace/{quote(key, safe='@')}"
    params = {"since": repr(since), **({"scope": scope} if scope else {})}
    async with session.get(url, params=params, headers={"Authorization": f"Bearer {token}"}) as response:
        if response.status != 200:
            raise LookupError(f"{url} answered HTTP {response.status}: {(await response.text())[:200]}")
        body = await response.content.read(most_bytes + 1)
    if len(body) > most_bytes:
        raise LookupError(f"{url} answered more than {most_bytes:,} bytes")
    try:
        answer = json.loads(body)
        return Gathered([from_json(item) for item in answer["messages"]], list(answer.get("nodes", [])),
                        dict(answer.get("unreachable", {})))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise LookupError(f"{url} answered no trace: {error}") from None


def may_hold(record: Mapping[str, Any], key: str) -> bool:
    """Whether a node may have messages of `key`: a connection's are only where its domain is served (another
    SipDomain's pods hold none, and take another token); an address's may be anywhere."""
    served = record.get("domains")
    return served is None or "@" not in key or key.rpartition("@")[2] in served


def node_url(record: Mapping[str, Any]) -> str:
    return f"http://{bracketed(str(record['address']))}:{int(record['httpPort'])}"


def _why(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__
