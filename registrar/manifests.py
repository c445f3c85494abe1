"""The manifest loader: reads SipDomain, SipConnection and Secret YAML (what `kubectl apply` gets) into a Catalog.

`sipreg serve` runs the same manifests a cluster would get, without a cluster.
`load_catalog(path)` takes a file or a directory (its *.yaml, *.yml and *.json
files, sorted by name, not recursive, dot-files skipped), reads every document
of every file and returns the domains and connections as registrar.model
values. Objects may appear in any order and any file: a SipConnection may come
before the SipDomain and the Secret it refers to.

What is read (group/version sipreg.io/v1alpha1, field names as in docs/DESIGN.md):

- SipDomain -> Domain. `spec.registration` ABSENT MEANS DISABLED: docs/DESIGN.md
  says "absent or enabled: false -> REGISTER gets 405", so a domain accepts
  registrations only when its manifest says so; `registration: {}` enables
  them with the default expiry bounds.
- SipConnection -> Connection. For `authentication.type: credentials` the
  password is read from the Secret named by `passwordSecretRef` in the
  connection's own namespace, and only its HA1 digests (MD5 and SHA-256,
  realm = the domain name) are kept: the password never reaches the Catalog.
- v1 Secret: `data` (base64) and `stringData` (plain text), merged per key
  with `stringData` winning, as the Kubernetes API server does.
- Everything else (Namespace, ConfigMap, ...) is ignored, except a SipDomain
  or SipConnection of another sipreg.io version, which is an error: silently
  dropping a domain would be worse than refusing to start.

The rules follow Kubernetes where it has one: a field that is null counts as
absent; unknown fields in a spec are errors (kubectl's strict field
validation); duplicate keys in a YAML mapping are errors (as in kubectl);
metadata.name must be a DNS-1123 subdomain and the namespace a DNS-1123 label
(default "default"). Two objects with the same kind, namespace and name are an
error (in a cluster the second would silently replace the first).

Every problem raises ManifestError naming the file, the object and the field:
    manifests/users.yaml: SipConnection voip/alice: spec.authentication.passwordSecretRef.name: Secret voip/alice-sip not found
YAML syntax errors name the file and line:  manifests/users.yaml:7: YAML syntax error: ...

Each validation rule lives in one place: the per-field rules in the schema
tables (_SIP_DOMAIN_SPEC, _SIP_CONNECTION_SPEC) built from small parsers,
the cross-field rules in the `check` functions those tables name, and the
cross-object rules (Secrets, domain references, duplicates) in the builders.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Callable, Container, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from registrar.model import (
    Catalog,
    Connection,
    ConnectionLimits,
    Domain,
    KeepalivePolicy,
    LockoutPolicy,
    RegistrationPolicy,
    SecurityPolicy,
    SourceLimits,
)
from registrar.sip.digest import ha1
from registrar.sip.uri import URIError, parse_uri

API_VERSION = "sipreg.io/v1alpha1"
API_GROUP = API_VERSION.split("/")[0]
DEFAULT_NAMESPACE = "default"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# HA1 is stored for every algorithm the registrar can verify, whatever the
# domain offers today, so that enabling SHA-256 later needs no password.
HA1_ALGORITHMS = ("MD5", "SHA-256")


class ManifestError(ValueError):
    """A manifest that cannot be loaded; the message names file, object and field."""


def load_catalog(path: str | os.PathLike[str], notes: list[str] | None = None) -> Catalog:
    """Load every manifest under `path` (a file or a directory) into a Catalog.

    Raises ManifestError for anything malformed, unresolvable or duplicated. What is
    worth saying but serves all the same goes to `notes`: a certificate Secret the
    manifests do not have (`sipreg serve` takes its certificate from --tls-cert).
    """
    objects: list[_Object] = []
    for file in _manifest_files(Path(path)):
        objects.extend(_objects_in(str(file), _read_documents(file)))
    _reject_duplicate_identities(objects)

    secrets: dict[tuple[str, str], dict[str, bytes]] = {}
    for obj in _of_kind(objects, "Secret"):
        with obj.reporting():
            secrets[(obj.namespace, obj.name)] = secret_data(obj.body)

    domains: dict[str, Domain] = {}
    domain_owners: dict[str, _Object] = {}
    for obj in _of_kind(objects, "SipDomain"):
        with obj.reporting():
            domain = domain_from_spec(obj.body.get("spec"))
            if domain.name in domains:
                owner = domain_owners[domain.name]
                raise SpecError("spec.domain", f"{domain.name!r} is already defined by {owner.described}")
            domains[domain.name] = domain
            domain_owners[domain.name] = obj
        missing: dict[str, list[str]] = {}  # Secret name -> the fields naming it
        for field_name, secret in certificate_secrets(obj.body.get("spec")):
            if (obj.namespace, secret) not in secrets:
                missing.setdefault(secret, []).append(field_name)
        for secret, field_names in missing.items():
            if notes is not None:
                notes.append(
                    f"{obj.file}: {obj.label}: {', '.join(field_names)}: Secret {obj.namespace}/{secret} is not in "
                    "the manifests (in a cluster the registrar pods mount it); `sipreg serve` serves TLS and wss "
                    "with --tls-cert (--wss-cert), else a self-signed certificate"
                )

    connections: dict[tuple[str, str], Connection] = {}
    connection_owners: dict[tuple[str, str], _Object] = {}
    for obj in _of_kind(objects, "SipConnection"):
        with obj.reporting():
            connection = connection_from_spec(
                obj.name, obj.namespace, obj.body.get("spec"), domains, lambda ns, name: secrets.get((ns, name))
            )
            key = (connection.domain, connection.username)
            if key in connections:
                owner = connection_owners[key]
                raise SpecError("spec.username", f"{connection.aor} is already defined by {owner.described}")
            connections[key] = connection
            connection_owners[key] = obj

    return Catalog(domains=domains, connections=connections)


# --- Files and YAML ---------------------------------------------------------


def _manifest_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".") and p.is_file()),
            key=lambda p: p.name,
        )
        if not files:
            raise ManifestError(f"{path}: no manifest files ({', '.join('*' + s for s in MANIFEST_SUFFIXES)})")
        return files
    if path.is_file():
        return [path]
    raise ManifestError(f"{path}: no such file or directory")


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """yaml's safe loader, except that a key repeated in one mapping is an error.

    PyYAML silently keeps the last value, so a pasted-twice `password:` would
    change a credential without a word; kubectl refuses such files.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may override, as in YAML
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_documents(file: Path) -> list[Any]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{file}: cannot read: {exc}") from None
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        problem = "; ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        column = f" (column {mark.column + 1})" if mark else ""
        raise ManifestError(f"{where}: YAML syntax error: {problem}{column}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{file}: YAML syntax error: {exc}") from None


# --- Objects ----------------------------------------------------------------


class SpecError(ValueError):
    """A problem at a field path inside one object: a ManifestError in a file, a status condition in a cluster.

    `reason` is a CamelCase word for a Kubernetes condition: what kind of
    problem it is, so a user can tell a typo from a Secret not yet created.
    """

    def __init__(self, path: str, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
        self.reason = reason


@contextmanager
def _reporting(where: str) -> Iterator[None]:
    """Turn a SpecError raised inside into a ManifestError prefixed with `where`."""
    try:
        yield
    except SpecError as exc:
        raise ManifestError(f"{where}: {exc.path}: {exc.message}") from None


@dataclass(frozen=True)
class _Object:
    """One Kubernetes object from a manifest file, identified but not yet validated."""

    file: str
    api_version: str
    kind: str
    namespace: str
    name: str
    body: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def described(self) -> str:
        return f"{self.label} in {self.file}"

    def reporting(self) -> AbstractContextManager[None]:
        return _reporting(f"{self.file}: {self.label}")


# The (apiVersion, kind) pairs the loader reads; everything else is ignored.
_READ_KINDS = {("v1", "Secret"), (API_VERSION, "SipDomain"), (API_VERSION, "SipConnection")}
_OUR_KINDS = {kind for api_version, kind in _READ_KINDS if api_version == API_VERSION}


def _objects_in(file: str, documents: list[Any]) -> Iterator[_Object]:
    for index, document in enumerate(documents, start=1):
        yield from _objects_of(file, document, f"document {index}")


def _objects_of(file: str, document: Any, position: str) -> Iterator[_Object]:
    if document is None:  # an empty document (a stray `---`)
        return
    if not isinstance(document, dict):
        raise ManifestError(f"{file}: {position}: expected a Kubernetes object (a mapping), got {_show(document)}")
    with _reporting(f"{file}: {position}"):
        api_version = _string(document.get("apiVersion"), "apiVersion")
        kind = _string(document.get("kind"), "kind")
    if (api_version, kind) == ("v1", "List"):  # what `kubectl get -o yaml` writes
        with _reporting(f"{file}: {position}"):
            items = _list_of(_anything)(document.get("items") or [], "items")
        for number, item in enumerate(items):
            yield from _objects_of(file, item, f"{position} items[{number}]")
        return
    if (api_version, kind) not in _READ_KINDS:
        if api_version.split("/")[0] == API_GROUP and kind in _OUR_KINDS:
            raise ManifestError(
                f"{file}: {kind} in {position}: apiVersion: {api_version!r} is not supported (expected {API_VERSION!r})"
            )
        if api_version.split("/")[0] == API_GROUP:
            # Ours, yet unknown: a misspelt kind ("SIPDomain") would otherwise vanish, and the error it
            # leads to (a connection's domain not found) would blame another file.
            near = [ours for ours in sorted(_OUR_KINDS) if ours.lower() == kind.lower()]
            raise ManifestError(
                f"{file}: {position}: kind: {kind!r} is not a {API_GROUP} kind "
                + (f"(did you mean {near[0]!r}?)" if near else f"(there are {', '.join(map(repr, sorted(_OUR_KINDS)))})")
            )
        return
    with _reporting(f"{file}: {kind} in {position}"):
        namespace, name = _metadata(_required(document.get("metadata"), "metadata"), "metadata")
    yield _Object(file, api_version, kind, namespace, name, document)


def _reject_duplicate_identities(objects: list[_Object]) -> None:
    first: dict[tuple[str, str, str], _Object] = {}
    for obj in objects:
        key = (obj.kind, obj.namespace, obj.name)
        if key in first:
            with obj.reporting():
                raise SpecError("metadata.name", f"duplicate of the {first[key].described}")
        first[key] = obj


def _of_kind(objects: list[_Object], kind: str) -> Iterator[_Object]:
    return (obj for obj in objects if obj.kind == kind)


# --- Parsers: (value, path) -> parsed value, or raise SpecError -------------

Parser = Callable[[Any, str], Any]
_REQUIRED = object()  # _Field.default: the field must be present
_FROM_EMPTY = object()  # _Field.default: absent is the same as {} (its own defaults apply)


@dataclass(frozen=True)
class _Field:
    parse: Parser
    default: Any = _REQUIRED


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _required(value: Any, path: str) -> Any:
    if value is None:
        raise SpecError(path, "required")
    return value


def _anything(value: Any, path: str) -> Any:
    return value


def _object(fields: dict[str, _Field], check: Callable[[dict[str, Any], str], None] | None = None) -> Parser:
    """A mapping with exactly these fields; `check` holds the rules that span fields."""

    def parse(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise SpecError(path, f"expected a mapping, got {_show(value)}")
        for key in value:
            if key not in fields:
                raise SpecError(f"{path}.{key}", f"unknown field (expected one of: {', '.join(fields)})")
        parsed = {}
        for name, spec in fields.items():
            where = f"{path}.{name}"
            raw = value.get(name)
            if raw is not None:
                parsed[name] = spec.parse(raw, where)
            elif spec.default is _REQUIRED:
                raise SpecError(where, "required")
            elif spec.default is _FROM_EMPTY:
                parsed[name] = spec.parse({}, where)
            else:
                parsed[name] = spec.default
        if check is not None:
            check(parsed, path)
        return parsed

    parse.fields = fields  # type: ignore[attr-defined]  # the field table, for tests/unit/test_crds.py
    return parse


def _list_of(item: Parser, *, non_empty: bool = False, unique: bool = False) -> Parser:
    def parse(value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise SpecError(path, f"expected a list, got {_show(value)}")
        if non_empty and not value:
            raise SpecError(path, "must not be empty")
        parsed = tuple(item(element, f"{path}[{i}]") for i, element in enumerate(value))
        if unique:
            for i, element in enumerate(parsed):
                if element in parsed[:i]:
                    raise SpecError(f"{path}[{i}]", f"{_show(element)} is listed twice")
        return parsed

    return parse


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"expected a string, got {_show(value)}")
    if not value:
        raise SpecError(path, "must not be empty")
    return value


def _matching(pattern: str, what: str) -> Parser:
    regex = re.compile(pattern)

    def parse(value: Any, path: str) -> str:
        text = _string(value, path)
        if not regex.fullmatch(text):
            raise SpecError(path, f"expected {what}, got {_show(text)}")
        return text

    return parse


def _integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(value: Any, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):  # YAML `true` is not 1
            raise SpecError(path, f"expected an integer, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise SpecError(path, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise SpecError(path, f"must be at most {maximum}, got {value}")
        return value

    return parse


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"expected true or false, got {_show(value)}")
    return value


def _one_of(*choices: str) -> Parser:
    def parse(value: Any, path: str) -> str:
        if value not in choices:  # exact spelling, like a CRD enum
            raise SpecError(path, f"expected one of {', '.join(map(repr, choices))}, got {_show(value)}")
        return value

    return parse


_port = _integer(1, 65535)
_count = _integer(1, 2**31 - 1)
_seconds = _integer(1, 86400)
# Expires values are 32-bit delta-seconds (RFC 3261 section 20.19).
_expires = _integer(1, 2**32 - 1)

# DNS-1123 subdomain (object names) and label (namespaces), as Kubernetes checks them.
_object_name = _matching(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", "a DNS-1123 name")
_namespace = _matching(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "a DNS-1123 label")
# Secret data keys, as Kubernetes checks them.
_secret_key = _matching(r"[-._a-zA-Z0-9]{1,253}", "a Secret key (letters, digits, '-', '_', '.')")
# SIP user part: anything a UA can put before the '@' of its AOR except
# whitespace, control characters, '@' and ':' (which would end the user part).
# A web origin as browsers send it (RFC 6454): scheme, host, and a port only when not the scheme's default.
_origin = _matching(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)(:[0-9]{1,5})?",
                    "an origin such as https://phone.example.com")
_username = _matching(r"[^\s@:\x00-\x1f\x7f]+", "a SIP username (no whitespace, '@' or ':')")
_hostname = _matching(
    r"(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?",
    "a fully qualified domain name",
)


def _domain_name(value: Any, path: str) -> str:
    """A domain name, lower-cased: SIP host comparison is case-insensitive (RFC 3261 19.1.4)."""
    return _hostname(value, path).lower()


def _sip_uri(value: Any, path: str) -> str:
    text = _string(value, path)
    try:
        uri = parse_uri(text)
    except URIError as exc:
        raise SpecError(path, f"expected a sip: or sips: URI, got {_show(text)}: {exc}") from None
    if uri.scheme not in ("sip", "sips"):
        raise SpecError(path, f"expected a sip: or sips: URI, got {_show(text)}")
    return text


def _network(value: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR, or a plain IP address meaning that one host (/32 or /128)."""
    text = _string(value, path)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise SpecError(path, f"{text!r} has host bits set (meant {loose} or a single address?)") from None
        raise SpecError(path, f"expected a CIDR or an IP address, got {_show(text)}") from None


def _metadata(value: Any, path: str) -> tuple[str, str]:
    """(namespace, name); other metadata (labels, annotations, ...) is free-form."""
    if not isinstance(value, dict):
        raise SpecError(path, f"expected a mapping, got {_show(value)}")
    name = _object_name(_required(value.get("name"), f"{path}.name"), f"{path}.name")
    namespace = value.get("namespace")
    namespace = DEFAULT_NAMESPACE if namespace is None else _namespace(namespace, f"{path}.namespace")
    return namespace, name


# --- Schemas ------------------------------------------------------------------

_POLICY_DEFAULTS = RegistrationPolicy()
_SECURITY_DEFAULTS = SecurityPolicy()
_KEEPALIVE_DEFAULTS = KeepalivePolicy()
_DOMAIN_DEFAULTS = Domain(name="")
_CONNECTION_DEFAULTS = Connection(domain="", username="")


def _expiry_bounds(registration: dict[str, Any], path: str) -> None:
    """0 < minExpires <= defaultExpires <= maxExpires (positivity is the fields' own rule)."""
    for low, high in (("minExpires", "maxExpires"), ("minExpires", "defaultExpires"), ("defaultExpires", "maxExpires")):
        if registration[low] > registration[high]:
            raise SpecError(
                f"{path}.{low}", f"{registration[low]} is greater than {high} ({registration[high]})"
            )


def _authentication_rules(authentication: dict[str, Any], path: str) -> None:
    """credentials needs a password; ip needs addresses and has no use for a password."""
    if authentication["type"] == "credentials" and authentication["passwordSecretRef"] is None:
        raise SpecError(f"{path}.passwordSecretRef", "required when type is credentials")
    if authentication["type"] == "ip":
        if not authentication["allowedAddresses"]:
            raise SpecError(f"{path}.allowedAddresses", "must list at least one address when type is ip")
        if authentication["passwordSecretRef"] is not None:
            raise SpecError(f"{path}.passwordSecretRef", "not used when type is ip; remove it")


_SIP_DOMAIN_SPEC = _object(
    {
        "domain": _Field(_domain_name),
        # Absent: registration disabled (405), see the module docstring.
        "registration": _Field(
            _object(
                {
                    "enabled": _Field(_boolean, True),
                    "minExpires": _Field(_expires, _POLICY_DEFAULTS.min_expires),
                    "defaultExpires": _Field(_expires, _POLICY_DEFAULTS.default_expires),
                    "maxExpires": _Field(_expires, _POLICY_DEFAULTS.max_expires),
                },
                check=_expiry_bounds,
            ),
            None,
        ),
        "mode": _Field(_one_of("proxy", "redirect"), _DOMAIN_DEFAULTS.mode),
        # Validated here, used by the operator (Services) and the listeners' config.
        "transports": _Field(
            _object(
                {
                    "udp": _Field(_port, None),
                    "tcp": _Field(_port, None),
                    "tls": _Field(_object({"port": _Field(_port), "certificateSecret": _Field(_object_name)}), None),
                    # SIP over WebSocket (RFC 7118): plain for development, and over TLS.
                    "ws": _Field(_port, None),
                    "wss": _Field(_object({"port": _Field(_port), "certificateSecret": _Field(_object_name)}), None),
                }
            ),
            None,
        ),
        "replicas": _Field(_integer(minimum=1), 1),
        "outbound": _Field(_object({"gateway": _Field(_sip_uri)}), None),
        "authentication": _Field(
            _object(
                {
                    # Default MD5 only: most deployed softphones, and sipp, do
                    # only MD5, and a UA that sees an unknown algorithm first may
                    # give up. Operators opt into SHA-256 (RFC 8760) per domain;
                    # the order given is the order the challenges are offered.
                    "algorithms": _Field(
                        _list_of(_one_of("SHA-256", "MD5"), non_empty=True, unique=True),
                        _DOMAIN_DEFAULTS.digest_algorithms,
                    ),
                }
            ),
            _FROM_EMPTY,
        ),
        # Defaults and why: registrar.model's KeepalivePolicy.
        "keepalive": _Field(
            _object(
                {
                    "pingIntervalSeconds": _Field(_integer(0, 3600), _KEEPALIVE_DEFAULTS.ping_interval),
                    "pingFailures": _Field(_integer(1, 100), _KEEPALIVE_DEFAULTS.ping_failures),
                    "flowTimerUdpSeconds": _Field(_integer(10, 3600), _KEEPALIVE_DEFAULTS.flow_timer_udp),
                    "flowTimerStreamSeconds": _Field(_integer(10, 3600), _KEEPALIVE_DEFAULTS.flow_timer_stream),
                }
            ),
            _FROM_EMPTY,
        ),
        # Defaults and why: registrar.model's SecurityPolicy and its parts.
        "security": _Field(
            _object(
                {
                    "trustedNetworks": _Field(_list_of(_network), ()),
                    "rateLimit": _Field(
                        _object(
                            {
                                "requestsPerSecond": _Field(_count, int(_SECURITY_DEFAULTS.sources.requests_per_second)),
                                "burst": _Field(_count, _SECURITY_DEFAULTS.sources.burst),
                                "banAfter": _Field(_count, _SECURITY_DEFAULTS.sources.ban_after),
                                "banSeconds": _Field(_seconds, _SECURITY_DEFAULTS.sources.ban_seconds),
                                "maxBanSeconds": _Field(_seconds, _SECURITY_DEFAULTS.sources.max_ban_seconds),
                            }
                        ),
                        _FROM_EMPTY,
                    ),
                    "lockout": _Field(
                        _object(
                            {
                                "failuresPerSource": _Field(_count, _SECURITY_DEFAULTS.lockout.failures_per_source),
                                "failuresPerUser": _Field(_count, _SECURITY_DEFAULTS.lockout.failures_per_user),
                                "windowSeconds": _Field(_seconds, _SECURITY_DEFAULTS.lockout.window_seconds),
                                "lockoutSeconds": _Field(_seconds, _SECURITY_DEFAULTS.lockout.lockout_seconds),
                                "maxLockoutSeconds": _Field(_seconds, _SECURITY_DEFAULTS.lockout.max_lockout_seconds),
                                "failuresPerNonce": _Field(_count, _SECURITY_DEFAULTS.lockout.failures_per_nonce),
                            }
                        ),
                        _FROM_EMPTY,
                    ),
                    "connections": _Field(
                        _object(
                            {
                                "perSource": _Field(_count, _SECURITY_DEFAULTS.connections.per_source),
                                "total": _Field(_count, _SECURITY_DEFAULTS.connections.total),
                                "messageSeconds": _Field(_seconds, int(_SECURITY_DEFAULTS.connections.message_seconds)),
                                "handshakeSeconds": _Field(
                                    _seconds, int(_SECURITY_DEFAULTS.connections.handshake_seconds)
                                ),
                            }
                        ),
                        _FROM_EMPTY,
                    ),
                    "maxTransactions": _Field(_count, _SECURITY_DEFAULTS.max_transactions),
                    "webSocketOrigins": _Field(_list_of(_origin, unique=True), ()),
                }
            ),
            _FROM_EMPTY,
        ),
    }
)

_SIP_CONNECTION_SPEC = _object(
    {
        "domain": _Field(_domain_name),
        "username": _Field(_username),
        "authentication": _Field(
            _object(
                {
                    "type": _Field(_one_of("credentials", "ip"), _CONNECTION_DEFAULTS.authentication),
                    "passwordSecretRef": _Field(
                        _object({"name": _Field(_object_name), "key": _Field(_secret_key, "password")}), None
                    ),
                    # For type ip the allow-list is the authentication; for
                    # credentials it is an extra check (empty: any address).
                    "allowedAddresses": _Field(_list_of(_network), ()),
                },
                check=_authentication_rules,
            ),
            _FROM_EMPTY,
        ),
        "maxContacts": _Field(_integer(minimum=1), _CONNECTION_DEFAULTS.max_contacts),
        "inbound": _Field(_boolean, _CONNECTION_DEFAULTS.inbound),
        "outbound": _Field(_boolean, _CONNECTION_DEFAULTS.outbound),
    }
)

# --- Builders: specs -> model values (the operator builds with these too) -------

SecretLookup = Callable[[str, str], "dict[str, bytes] | None"]  # (namespace, name) -> the Secret's data


def secret_data(body: dict[str, Any]) -> dict[str, bytes]:
    """A Secret's values as bytes: `data` decoded from base64, then `stringData` on top."""
    values: dict[str, bytes] = {}
    for section in ("data", "stringData"):
        raw = body.get(section)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise SpecError(section, f"expected a mapping, got {_show(raw)}")
        for key, value in raw.items():
            path = f"{section}.{key}"
            _secret_key(key, path)
            if not isinstance(value, str):
                raise SpecError(path, f"expected a string, got {_show(value)}")
            if section == "stringData":
                values[key] = value.encode("utf-8")
                continue
            try:
                values[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise SpecError(path, "not valid base64 (plain text goes in stringData)") from None
    return values


def certificate_secrets(raw_spec: Any) -> list[tuple[str, str]]:
    """(field, Secret name) of each certificate a SipDomain names: tls's and wss's (a cluster's pods mount them)."""
    try:
        transports = raw_spec["transports"] or {}
        return [
            (f"spec.transports.{transport}.certificateSecret", transports[transport]["certificateSecret"])
            for transport in ("tls", "wss")
            if isinstance(transports.get(transport), dict)
            and isinstance(transports[transport].get("certificateSecret"), str)
        ]
    except (KeyError, TypeError):
        return []


def domain_spec(raw_spec: Any) -> dict[str, Any]:
    """A SipDomain's spec checked, defaults filled in (what the operator builds pods from); raises SpecError."""
    return _SIP_DOMAIN_SPEC(_required(raw_spec, "spec"), "spec")


def domain_from_spec(raw_spec: Any) -> Domain:
    """A SipDomain's spec as the registrar's Domain; raises SpecError naming the field."""
    spec = domain_spec(raw_spec)
    registration = spec["registration"]
    if registration is None:
        policy = RegistrationPolicy(enabled=False)
    else:
        policy = RegistrationPolicy(
            enabled=registration["enabled"],
            min_expires=registration["minExpires"],
            default_expires=registration["defaultExpires"],
            max_expires=registration["maxExpires"],
        )
    outbound, keepalive = spec["outbound"], spec["keepalive"]
    return Domain(
        name=spec["domain"],
        registration=policy,
        mode=spec["mode"],
        outbound_gateway=outbound["gateway"] if outbound else None,
        digest_algorithms=tuple(spec["authentication"]["algorithms"]),
        security=security_from_spec(spec["security"]),
        keepalive=KeepalivePolicy(
            ping_interval=keepalive["pingIntervalSeconds"],
            ping_failures=keepalive["pingFailures"],
            flow_timer_udp=keepalive["flowTimerUdpSeconds"],
            flow_timer_stream=keepalive["flowTimerStreamSeconds"],
        ),
    )


def security_from_spec(security: dict[str, Any]) -> SecurityPolicy:
    """A checked spec.security (all defaults filled in) as the model's SecurityPolicy."""
    rate, lockout, connections = security["rateLimit"], security["lockout"], security["connections"]
    return SecurityPolicy(
        trusted_networks=tuple(security["trustedNetworks"]),
        sources=SourceLimits(
            requests_per_second=float(rate["requestsPerSecond"]),
            burst=rate["burst"],
            ban_after=rate["banAfter"],
            ban_seconds=rate["banSeconds"],
            max_ban_seconds=rate["maxBanSeconds"],
        ),
        lockout=LockoutPolicy(
            failures_per_source=lockout["failuresPerSource"],
            failures_per_user=lockout["failuresPerUser"],
            window_seconds=lockout["windowSeconds"],
            lockout_seconds=lockout["lockoutSeconds"],
            max_lockout_seconds=lockout["maxLockoutSeconds"],
            failures_per_nonce=lockout["failuresPerNonce"],
        ),
        connections=ConnectionLimits(
            per_source=connections["perSource"],
            total=connections["total"],
            message_seconds=float(connections["messageSeconds"]),
            handshake_seconds=float(connections["handshakeSeconds"]),
        ),
        max_transactions=security["maxTransactions"],
        websocket_origins=tuple(origin.lower() for origin in security["webSocketOrigins"]),
    )


def connection_from_spec(
    name: str, namespace: str, raw_spec: Any, domains: Container[str], find_secret: SecretLookup
) -> Connection:
    """A SipConnection's spec as a Connection with HA1 digests; raises SpecError naming the field.

    `domains` holds the domain names some SipDomain defines; `find_secret`
    reads a Secret of the connection's namespace. The password itself is used
    for the digests and dropped.
    """
    spec = _SIP_CONNECTION_SPEC(_required(raw_spec, "spec"), "spec")
    domain = spec["domain"]
    if domain not in domains:
        raise SpecError("spec.domain", f"no SipDomain defines {domain!r}", reason="DomainNotFound")
    authentication = spec["authentication"]
    digests: dict[str, str] = {}
    if authentication["passwordSecretRef"] is not None:
        password = _password(
            authentication["passwordSecretRef"], namespace, find_secret, "spec.authentication.passwordSecretRef"
        )
        # The realm is the domain name: the registrar challenges with realm=domain.
        digests = {algorithm: ha1(algorithm, spec["username"], domain, password) for algorithm in HA1_ALGORITHMS}
    return Connection(
        domain=domain,
        username=spec["username"],
        authentication=authentication["type"],
        ha1=digests,
        allowed_networks=tuple(authentication["allowedAddresses"]),
        max_contacts=spec["maxContacts"],
        inbound=spec["inbound"],
        outbound=spec["outbound"],
        name=name,
    )


def _password(ref: dict[str, str], namespace: str, find_secret: SecretLookup, path: str) -> str:
    """The password a passwordSecretRef names, looked up in the connection's namespace."""
    secret = f"Secret {namespace}/{ref['name']}"
    data = find_secret(namespace, ref["name"])
    if data is None:
        raise SpecError(f"{path}.name", f"{secret} not found", reason="SecretNotFound")
    if ref["key"] not in data:
        keys = ", ".join(map(repr, sorted(data))) or "none"
        raise SpecError(
            f"{path}.key", f"{secret} has no key {ref['key']!r} (it has: {keys})", reason="SecretKeyNotFound"
        )
    try:
        password = data[ref["key"]].decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(
            f"{path}.key", f"{secret} key {ref['key']!r} is not UTF-8 text", reason="SecretKeyInvalid"
        ) from None
    if not password:
        raise SpecError(f"{path}.key", f"{secret} key {ref['key']!r} is empty", reason="SecretKeyInvalid")
    return password
