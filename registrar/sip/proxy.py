"""What a proxy does to the messages it relays (RFC 3261 section 16): pure functions, no state.

Copying a request onto a branch (Request-URI, Max-Forwards, Via, Record-Route,
Route), taking our entries off what comes back (Route on requests, Via on
responses), building the CANCEL of a branch (its ACK is the transaction
layer's), loop detection (RFC 3261 16.3 step 4 with the RFC 5393 hash) and
choosing the best final response (16.7 step 6). The stateful part, which
decides when to do each, is registrar.proxy.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Sequence

from registrar.sip.grammar import parse_digits
from registrar.sip.headers import MAGIC_COOKIE, NameAddr, Via, parse_name_addr, parse_via, split_list
from registrar.sip.message import Request, Response, SipError
from registrar.sip.transaction import DEFAULT_MAX_FORWARDS, in_its_transaction

# Our branches: the magic cookie, our mark, the loop hash, then a per-branch count.
BRANCH_MARK = MAGIC_COOKIE + "-sr"
_LOOP_HASH_LENGTH = 12
_branch_numbers = itertools.count(1)
_BRANCH_SALT = os.urandom(4).hex()


def max_forwards(request: Request) -> int | None:
    """The Max-Forwards value, None when absent; SipError 400 when malformed."""
    text = request.get("Max-Forwards")
    if text is None:
        return None
    value = parse_digits(text.strip(), 256)
    if value is None or value > 255:
        raise SipError(400, "Bad Max-Forwards")
    return value


def loop_hash(request: Request) -> str:
    """What identifies a request at this hop, for loop detection (RFC 5393 section 4.2).

    Everything that a legitimate spiral changes (the Request-URI, the Route set)
    is in it; the topmost Via, which differs on every pass, is not.
    """
    to_tag = request.name_addr("To").tag or ""  # SipError 400 for a malformed To or From
    from_tag = request.name_addr("From").tag or ""
    number, _ = request.cseq  # checked by the parser
    parts = [request.uri, to_tag, from_tag, request.call_id, str(number),
             *request.get_all("Proxy-Require"), *request.get_all("Proxy-Authorization"), *request.get_all("Route")]
    return hashlib.sha1("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:_LOOP_HASH_LENGTH]


def new_branch(hash_of_request: str) -> str:
    """A branch for one forwarded copy: unique, and carrying the loop hash."""
    return f"{BRANCH_MARK}{hash_of_request}.{_BRANCH_SALT}{next(_branch_numbers):x}"


def our_vias(request: Request, is_our_sent_by: Callable[[Via], bool]) -> list[Via]:
    """The Vias a request carries that we put there: it has been through us before."""
    vias = []
    for value in request.get_all("Via"):
        try:
            via = parse_via(value)
        except ValueError:
            continue  # only the top Via must parse (checked on receipt); others are not ours
        if is_our_sent_by(via):
            vias.append(via)
    return vias


def has_looped(ours: Sequence[Via], hash_of_request: str) -> bool:
    """True when one of our Vias carries the hash this request has now (RFC 3261 16.3 step 4).

    A Via of ours with another hash is a spiral (the request came back with a
    new Request-URI or Route set), which is allowed.
    """
    for via in ours:
        branch = via.branch or ""
        if branch.startswith(BRANCH_MARK) and branch[len(BRANCH_MARK) :].split(".", 1)[0] == hash_of_request:
            return True
    return False


# -- Route ------------------------------------------------------------------------------


def routes(request: Request) -> list[NameAddr]:
    """The Route set, top first; SipError 400 for one that does not parse."""
    parsed = []
    for value in request.get_all("Route"):
        try:
            parsed.append(parse_name_addr(value))
        except ValueError as exc:
            raise SipError(400, f"Bad Route: {exc}") from None
    return parsed


def without_top_routes(request: Request, count: int) -> None:
    """Take the `count` topmost Route values off the request, in place (RFC 3261 16.4)."""
    if count <= 0:
        return
    values = request.get_all("Route")[count:]
    request.remove("Route")
    if values:
        position = _first_position(request)
        request.headers.insert(position, ("Route", ", ".join(values)))


def _first_position(request: Request) -> int:
    """Where a header that should sit early goes: after the Vias (cosmetic: reads like Kamailio's)."""
    last_via = max((i for i, (name, _) in enumerate(request.headers) if name == "Via"), default=-1)
    return last_via + 1


# -- forwarding -------------------------------------------------------------------------


def forwarded(
    request: Request,
    *,
    uri: str,
    via: str,
    record_routes: Sequence[str] = (),
    routes: Sequence[str] = (),
) -> Request:
    """A copy of `request` for one branch (RFC 3261 16.6 steps 1-8).

    `uri` becomes the Request-URI; `via` is pushed on top; `record_routes` go on
    top of the Record-Route list, the first one topmost (the one the callee's
    side sees first); `routes` (a hop inside the cluster, a registered Path) go on
    top of the Route set, the first one topmost. Max-Forwards goes down by one (70
    when absent).
    """
    hops = max_forwards(request)
    headers: list[tuple[str, str]] = []
    via_done = record_route_done = False
    for name, value in request.headers:
        if name == "Via" and not via_done:
            headers.append(("Via", via))
            via_done = True
        elif name == "Record-Route" and not record_route_done and record_routes:
            headers.extend(("Record-Route", value_) for value_ in record_routes)
            record_route_done = True
        elif name == "Max-Forwards":
            continue
        elif name == "Route" and routes:
            headers.extend(("Route", value_) for value_ in routes)
            routes = ()
        headers.append((name, value))
    if not via_done:
        headers.insert(0, ("Via", via))
    if record_routes and not record_route_done:
        headers.extend(("Record-Route", value) for value in record_routes)
    headers.extend(("Route", value) for value in routes)
    headers.append(("Max-Forwards", str(DEFAULT_MAX_FORWARDS if hops is None else hops - 1)))
    return Request(headers=headers, body=request.body, method=request.method, uri=uri)


# Why the losing branches of a fork are cancelled (RFC 3326): phones show no missed call for it.
COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'


def cancel_for(branch_request: Request, reason: str | None = None) -> Request:
    """The CANCEL of a forwarded INVITE (RFC 3261 9.1), with a Reason header when one is given (RFC 3326)."""
    cancel = in_its_transaction(branch_request, "CANCEL", branch_request.get("To") or "")
    if reason is not None:
        cancel.add("Reason", reason)
    return cancel


def without_top_via(response: Response) -> Response:
    """The response minus our Via, to send upstream (RFC 3261 16.7 step 3)."""
    headers = list(response.headers)
    for index, (name, value) in enumerate(headers):
        if name == "Via":
            rest = split_list(value)[1:]
            if rest:
                headers[index] = (name, ", ".join(rest))
            else:
                del headers[index]
            break
    return Response(headers=headers, body=response.body, status=response.status, reason=response.reason)


# -- choosing the answer ----------------------------------------------------------------


def best_response(responses: Sequence[Response]) -> Response:
    """The final response a forking proxy sends upstream when no branch succeeded (16.7 step 6).

    Any 6xx; otherwise the lowest class, and within it the challenges (401/407)
    and other answers that tell the caller what to change (415, 420, 484)
    before the rest. A lone 503 is not passed on: it would tell the caller that
    *we* are unavailable (16.7 step 6); the caller gets 500 instead.
    """
    assert responses, "best_response needs at least one final response"
    global_failures = [r for r in responses if r.status >= 600]
    if global_failures:
        return global_failures[0]
    lowest = min(r.status // 100 for r in responses)
    candidates = [r for r in responses if r.status // 100 == lowest]
    informative = [r for r in candidates if r.status in (401, 407, 415, 420, 484)]
    best = (informative or candidates)[0]
    if best.status == 503:
        replacement = Response(headers=list(best.headers), status=500, reason="Server Internal Error: Downstream Unavailable")
        replacement.remove("Retry-After")
        return replacement
    return best
