"""The CRDs in crds/: valid structural CustomResourceDefinitions that accept what the manifest loader accepts.

The API server is imitated, not run (tests/crd_schema.py: its defaulting, the
openAPIV3Schema with RE2 patterns, the CEL rules). Built-in objects and the CRDs
themselves are checked against Kubernetes' own OpenAPI schemas with kubernetes-validate.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import re2
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from registrar import manifests
from registrar.manifests import ManifestError, load_catalog
from tests.crd_schema import (
    ROOT,
    CRD_FILES,
    CRDS,
    OUR_KINDS,
    OLDEST_KUBERNETES,
    NEWEST_KUBERNETES,
    openapi_schema,
    with_defaults,
    cel_program,
    cel_failures,
    rejections,
    node_accepts,
    schema_nodes,
    spec_node,
)

# --- The shipped manifests --------------------------------------------------------


def shipped_documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted((ROOT / "manifests").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def by_kind(*kinds: str) -> list[Any]:
    return [
        pytest.param(document, id=f"{document['kind']}/{document['metadata']['name']}")
        for document in shipped_documents()
        if document["kind"] in kinds
    ]


def test_the_manifests_hold_every_kind() -> None:
    # Guards the parametrized tests below against passing on an empty list.
    assert {document["kind"] for document in shipped_documents()} == {"Namespace", "Secret", *OUR_KINDS}


@pytest.mark.parametrize("document", by_kind(*OUR_KINDS))
def test_shipped_custom_resources_are_accepted(document: dict[str, Any]) -> None:
    assert rejections(document) == []


@pytest.mark.parametrize("document", by_kind("Namespace", "Secret"))
def test_shipped_builtin_objects_validate_strictly(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, NEWEST_KUBERNETES, strict=True)


# --- The CRDs as Kubernetes objects ----------------------------------------------------


def test_one_crd_per_kind_and_file_names_are_the_crd_names() -> None:
    assert sorted(CRDS) == sorted(OUR_KINDS)
    assert [path.name for path in CRD_FILES] == sorted(f"{crd['metadata']['name']}.yaml" for crd in CRDS.values())


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("kind", OUR_KINDS)
def test_crd_validates_strictly_as_a_custom_resource_definition(kind: str, version: str) -> None:
    kubernetes_validate.validate(CRDS[kind], version, strict=True)


@pytest.mark.parametrize(
    ("kind", "plural", "short_name"),
    [("SipDomain", "sipdomains", "sipdom"), ("SipConnection", "sipconnections", "sipconn")],
)
def test_names_scope_and_version(kind: str, plural: str, short_name: str) -> None:
    spec = CRDS[kind]["spec"]
    assert CRDS[kind]["metadata"]["name"] == f"{plural}.sipreg.io"
    assert spec["group"] == manifests.API_GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": [short_name],
        "categories": ["sipreg"],
    }
    [version] = spec["versions"]
    assert f"{spec['group']}/{version['name']}" == manifests.API_VERSION
    assert (version["served"], version["storage"], version["subresources"]) == (True, True, {"status": {}})


@pytest.mark.parametrize("kind", OUR_KINDS)
def test_schema_is_structural_and_described(kind: str) -> None:
    schema = openapi_schema(kind)
    untyped = [path for path, node in schema_nodes(schema) if "type" not in node]
    undescribed = [path for path, node in schema_nodes(schema) if not node.get("description")]
    assert (untyped, undescribed) == ([], [])
    # Nothing escapes validation: no free-form subtrees, no logical junctors.
    escapes = {"x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "additionalProperties"}
    junctors = {"anyOf", "allOf", "oneOf", "not"}
    assert [path for path, node in schema_nodes(schema) if (escapes | junctors) & node.keys()] == []
    assert schema["required"] == ["spec"]


@pytest.mark.parametrize("kind", OUR_KINDS)
def test_every_default_passes_its_own_node(kind: str) -> None:
    # The API server refuses a CRD with a default that fails its node's schema or CEL
    # rules, checked as written (not defaulted further): a `default: {}` on a node with
    # a rule about its fields would make the CRD itself invalid.
    for path, node in schema_nodes(openapi_schema(kind)):
        if "default" in node:
            assert node_accepts(node, node["default"]), path
            assert cel_failures(node["default"], node, path) == []


@pytest.mark.parametrize("kind", OUR_KINDS)
def test_every_cel_rule_compiles_and_has_a_message(kind: str) -> None:
    rules = [v for _, node in schema_nodes(openapi_schema(kind)) for v in node.get("x-kubernetes-validations", [])]
    assert rules
    for validation in rules:
        cel_program(validation["rule"])
        assert validation["message"]


def test_both_kinds_share_one_condition_schema() -> None:
    conditions = [openapi_schema(kind)["properties"]["status"]["properties"]["conditions"] for kind in OUR_KINDS]
    strip = [{**c, "description": None} for c in conditions]
    assert strip[0] == strip[1]
    assert conditions[0]["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions[0]["items"]["required"] == ["type", "status"]


PRINTER_COLUMNS = {
    "SipDomain": ["Domain", "Mode", "Registration", "Replicas", "Ready", "Bindings", "Age"],
    "SipConnection": ["Domain", "Username", "Auth", "Registered", "Last-Failure", "Ready", "Age"],
}


@pytest.mark.parametrize("kind", OUR_KINDS)
def test_printer_columns_show_schema_fields_of_their_type(kind: str) -> None:
    columns = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [column["name"] for column in columns] == PRINTER_COLUMNS[kind]
    for column in columns:
        path = column["jsonPath"]
        if column["type"] == "date":
            assert path == ".metadata.creationTimestamp"
            continue
        node = openapi_schema(kind)
        # A filter such as [?(@.type=="Ready")] picks list items: step into `items`.
        for step in path.replace('[?(@.type=="Ready")]', ".[]").strip(".").split("."):
            node = node["items"] if step == "[]" else node["properties"][step]
        assert node["type"] == column["type"], path


# --- Status: what the operator writes --------------------------------------------------

CONDITION = {
    "type": "Ready",
    "status": "True",
    "reason": "Published",
    "message": "published to 2 registrars",
    "lastTransitionTime": "2026-11-24T10:00:00Z",
    "observedGeneration": 3,
}
STATUSES = {
    "SipDomain": {
        "replicas": 2,
        "readyReplicas": 2,
        "bindings": 14,
        "connections": 5,
        "registeredConnections": 4,
        "observedGeneration": 3,
        "conditions": [CONDITION],
    },
    "SipConnection": {
        "registered": True,
        "contacts": [
            {
                "uri": "sip:alice@203.0.113.5:40123;transport=udp",
                "transport": "udp",
                "source": "udp:203.0.113.5:40123",
                "expires": 600,
                "expiresAt": "2026-11-24T10:10:00Z",
                "userAgent": "baresip v1.0.0",
                "node": "sipreg-sip-example-test-0",
            }
        ],
        "lastRegistered": "2026-11-24T10:00:00Z",
        "lastFailure": {"time": "2026-11-24T09:59:59Z", "reason": "wrong password", "source": "udp:203.0.113.5:40123",
                        "kind": "register"},
        "observedGeneration": 3,
        "conditions": [CONDITION],
    },
}


@pytest.mark.parametrize("kind", OUR_KINDS)
def test_status_the_operator_writes_is_accepted_and_nothing_else(kind: str) -> None:
    status_node = openapi_schema(kind)["properties"]["status"]
    assert node_accepts(status_node, STATUSES[kind])
    assert node_accepts(status_node, {})
    assert not node_accepts(status_node, {**STATUSES[kind], "phase": "Running"})
    assert not node_accepts(status_node, {"conditions": [{**CONDITION, "status": "Maybe"}]})
    assert not node_accepts(status_node, {"conditions": [{"type": "Ready"}]})


def test_contact_transport_is_one_of_the_three() -> None:
    status_node = openapi_schema("SipConnection")["properties"]["status"]
    assert not node_accepts(status_node, {"contacts": [{"transport": "sctp"}]})


# --- Agreement with the loader -------------------------------------------------------------


def loader_fields(parser: Any, path: str = "") -> dict[str, Any]:
    """{dotted field path: its loader _Field} for every field of a loader schema table, nested ones too."""
    fields = {}
    for name, field in parser.fields.items():
        fields[f"{path}{name}"] = field
        if hasattr(field.parse, "fields"):
            fields.update(loader_fields(field.parse, f"{path}{name}."))
    return fields


LOADER_TABLES = {"SipDomain": manifests._SIP_DOMAIN_SPEC, "SipConnection": manifests._SIP_CONNECTION_SPEC}


def crd_fields(node: dict[str, Any], path: str = "") -> dict[str, tuple[dict[str, Any], bool]]:
    """{dotted field path: (its schema node, whether its parent requires it)} for every field under `node`."""
    fields = {}
    for name, child in node.get("properties", {}).items():
        fields[f"{path}{name}"] = (child, name in node.get("required", []))
        fields.update(crd_fields(child, f"{path}{name}."))
    return fields


@pytest.mark.parametrize("kind", OUR_KINDS)
def test_spec_fields_requiredness_and_defaults_match_the_loader(kind: str) -> None:
    loader = loader_fields(LOADER_TABLES[kind])
    crd = crd_fields(openapi_schema(kind)["properties"]["spec"])
    assert sorted(crd) == sorted(loader)
    for path, field in loader.items():
        node, required = crd[path]
        # Absent is the same as {} (its fields' defaults apply), unless {} is itself
        # invalid: then absent is an error, which the CRD says with `required`.
        from_empty = field.default is manifests._FROM_EMPTY
        required_from_empty = from_empty and not loader_accepts(field.parse, {})
        assert required == (field.default is manifests._REQUIRED or required_from_empty), path
        if required_from_empty:
            expected: Any = None
        elif from_empty:
            expected = {}
        elif field.default in (manifests._REQUIRED, None, ()):
            expected = None  # no default: absent stays absent (an empty list reads the same)
        else:
            expected = list(field.default) if isinstance(field.default, tuple) else field.default
        assert node.get("default") == expected, path


# A valid SipDomain, Secret and SipConnection; each case below changes one field.
DOMAIN = {
    "apiVersion": manifests.API_VERSION,
    "kind": "SipDomain",
    "metadata": {"name": "sip-example-test", "namespace": "voip"},
    "spec": {
        "domain": "sip.example.test",
        "registration": {"enabled": True, "minExpires": 60, "defaultExpires": 600, "maxExpires": 3600},
    },
}
SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "alice-sip", "namespace": "voip"},
    "stringData": {"password": "alice-secret-1"},
}
CONNECTION = {
    "apiVersion": manifests.API_VERSION,
    "kind": "SipConnection",
    "metadata": {"name": "alice", "namespace": "voip"},
    "spec": {
        "domain": "sip.example.test",
        "username": "alice",
        "authentication": {"type": "credentials", "passwordSecretRef": {"name": "alice-sip", "key": "password"}},
    },
}
BASES = {"SipDomain": DOMAIN, "SipConnection": CONNECTION}
REMOVE = object()  # a change that deletes the field


def changed(kind: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The valid object of `kind` with {dotted path under spec: new value or REMOVE} applied."""
    obj = copy.deepcopy(BASES[kind])
    for dotted, value in changes.items():
        *parents, name = ["spec", *dotted.split(".")] if dotted else ["spec"]
        target = obj
        for parent in parents:
            target = target.setdefault(parent, {})
        if value is REMOVE:
            target.pop(name, None)
        else:
            target[name] = value
    return obj


def load_with_company(tmp_path: Path, obj: dict[str, Any]) -> None:
    """load_catalog on `obj` with a Secret, and the valid SipDomain when `obj` is a SipConnection."""
    company = [SECRET] + ([DOMAIN] if obj["kind"] == "SipConnection" else [])
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all([*company, obj], allow_unicode=True))
    load_catalog(tmp_path)


def case(kind: str, changes: dict[str, Any], id: str) -> Any:
    return pytest.param(changed(kind, changes), id=f"{kind}-{id}")


NO_SECRET = {"authentication.passwordSecretRef": REMOVE}
IP = {**NO_SECRET, "authentication.type": "ip"}

REJECTED = [
    case("SipDomain", {"": REMOVE}, "spec-missing"),
    case("SipDomain", {"domain": REMOVE}, "domain-missing"),
    case("SipDomain", {"domain": "sip_example..test"}, "bad-domain-name"),
    case("SipDomain", {"domain": "-sip.example.test"}, "domain-label-starts-with-dash"),
    case("SipDomain", {"domain": "sip.example.test."}, "domain-trailing-dot"),
    case("SipDomain", {"domain": "a" * 64 + ".test"}, "domain-label-64"),
    case("SipDomain", {"domain": ("a" * 63 + ".") * 4 + "test"}, "domain-254-long"),
    case("SipDomain", {"domain": "sip.example.test\n"}, "domain-trailing-newline"),
    case("SipDomain", {"domain": ""}, "domain-empty"),
    case("SipDomain", {"registration.minExpires": 0}, "min-expires-zero"),
    case("SipDomain", {"registration.maxExpires": 2**32}, "max-expires-above-32-bits"),
    case("SipDomain", {"registration.minExpires": 4000}, "min-above-max"),
    case("SipDomain", {"registration.defaultExpires": 30}, "default-below-min"),
    case("SipDomain", {"registration.defaultExpires": 4000}, "default-above-max"),
    case("SipDomain", {"registration": {"maxExpires": 30}}, "max-below-the-default-default"),
    case("SipDomain", {"registration.minExpires": "sixty"}, "expires-not-an-integer"),
    case("SipDomain", {"registration.minExpires": True}, "expires-boolean"),
    case("SipDomain", {"registration.enabled": "yes"}, "enabled-not-boolean"),
    case("SipDomain", {"registration.minExpire": 60}, "unknown-registration-field"),
    case("SipDomain", {"replica": 2}, "unknown-spec-field"),
    case("SipDomain", {"mode": "stateful"}, "bad-mode"),
    case("SipDomain", {"mode": "Proxy"}, "mode-case"),
    case("SipDomain", {"replicas": 0}, "replicas-zero"),
    case("SipDomain", {"replicas": "2"}, "replicas-string"),
    case("SipDomain", {"transports": {"udp": 0}}, "port-zero"),
    case("SipDomain", {"transports": {"tcp": 65536}}, "port-above-65535"),
    case("SipDomain", {"transports": {"tls": {"port": 5061}}}, "tls-without-certificate"),
    case("SipDomain", {"transports": {"tls": {"port": 5061, "certificateSecret": "Sip_TLS"}}}, "bad-certificate-name"),
    case("SipDomain", {"transports": {"sctp": 5060}}, "unknown-transport"),
    case("SipDomain", {"outbound": {}}, "outbound-without-gateway"),
    case("SipDomain", {"outbound": {"gateway": "http://gw.example.test"}}, "gateway-not-sip"),
    case("SipDomain", {"outbound": {"gateway": ""}}, "gateway-empty"),
    case("SipDomain", {"authentication": {"algorithms": []}}, "no-algorithms"),
    case("SipDomain", {"authentication": {"algorithms": ["SHA-512"]}}, "bad-algorithm"),
    case("SipDomain", {"authentication": {"algorithms": ["MD5", "MD5"]}}, "algorithm-twice"),
    case("SipConnection", {"": REMOVE}, "spec-missing"),
    case("SipConnection", {"domain": REMOVE}, "domain-missing"),
    case("SipConnection", {"username": REMOVE}, "username-missing"),
    case("SipConnection", {"domain": "sip..example.test"}, "bad-domain-name"),
    case("SipConnection", {"username": "alice@sip.example.test"}, "username-with-at"),
    case("SipConnection", {"username": "alice:secret"}, "username-with-colon"),
    case("SipConnection", {"username": "al ice"}, "username-with-space"),
    case("SipConnection", {"username": "al\u00a0ice"}, "username-with-no-break-space"),
    case("SipConnection", {"username": "alice\n"}, "username-trailing-newline"),
    case("SipConnection", {"username": ""}, "username-empty"),
    case("SipConnection", NO_SECRET, "credentials-without-secret"),
    case("SipConnection", {"authentication": REMOVE}, "authentication-absent"),
    case("SipConnection", IP, "ip-without-addresses"),
    case("SipConnection", {**IP, "authentication.allowedAddresses": []}, "ip-with-empty-addresses"),
    case(
        "SipConnection",
        {"authentication.type": "ip", "authentication.allowedAddresses": ["192.0.2.0/24"]},
        "ip-with-secret",
    ),
    case("SipConnection", {"authentication.type": "password"}, "bad-auth-type"),
    case("SipConnection", {"authentication.password": "x"}, "unknown-authentication-field"),
    case("SipConnection", {"authentication.passwordSecretRef": {"key": "password"}}, "secret-ref-without-name"),
    case("SipConnection", {"authentication.passwordSecretRef.name": "Alice_Sip"}, "bad-secret-name"),
    case("SipConnection", {"authentication.passwordSecretRef.key": "pass word"}, "bad-secret-key"),
    case("SipConnection", {"authentication.allowedAddresses": ["10.0.0.300/8"]}, "bad-ipv4"),
    case("SipConnection", {"authentication.allowedAddresses": ["192.0.2.0/33"]}, "ipv4-prefix-33"),
    case("SipConnection", {"authentication.allowedAddresses": ["2001:db8::/129"]}, "ipv6-prefix-129"),
    case("SipConnection", {"authentication.allowedAddresses": ["pbx.example.test"]}, "address-a-name"),
    case("SipConnection", {"authentication.allowedAddresses": "192.0.2.0/24"}, "addresses-not-a-list"),
    case("SipConnection", {"maxContacts": 0}, "max-contacts-zero"),
    case("SipConnection", {"inbound": "no"}, "inbound-not-boolean"),
    case("SipConnection", {"outbound": 1}, "outbound-not-boolean"),
]

ACCEPTED = [
    case("SipDomain", {}, "as-is"),
    case("SipDomain", {"registration": REMOVE}, "registration-absent"),
    case("SipDomain", {"registration": {}}, "registration-empty"),
    case("SipDomain", {"registration": {"enabled": False}}, "registration-disabled"),
    case(
        "SipDomain", {"registration": {"minExpires": 1, "defaultExpires": 1, "maxExpires": 2**32 - 1}}, "expiry-edges"
    ),
    case("SipDomain", {"domain": "SIP.Example.TEST"}, "domain-upper-case"),
    case("SipDomain", {"domain": "localhost"}, "domain-one-label"),
    case("SipDomain", {"domain": ("a" * 63 + ".") * 3 + "a" * 61}, "domain-253-long"),
    case("SipDomain", {"mode": "redirect", "replicas": 1000}, "redirect"),
    case(
        "SipDomain",
        {"transports": {"udp": 1, "tcp": 65535, "tls": {"port": 5061, "certificateSecret": "sip-tls.v2"}}},
        "port-edges",
    ),
    case("SipDomain", {"transports": {}}, "no-transports"),
    case("SipDomain", {"outbound": {"gateway": "SIPS:gw.example.test;transport=tcp"}}, "gateway-sips-upper-case"),
    case("SipDomain", {"authentication": {"algorithms": ["SHA-256", "MD5"]}}, "both-algorithms"),
    case("SipDomain", {"authentication": {}}, "authentication-empty"),
    case("SipConnection", {}, "as-is"),
    case("SipConnection", {"authentication.type": REMOVE, "authentication.passwordSecretRef.key": REMOVE}, "defaults"),
    case("SipConnection", {"username": "+4930123456"}, "username-e164"),
    case("SipConnection", {"username": "Alice.Smith_1!%20*"}, "username-unusual-ascii"),
    case("SipConnection", {"username": "jürgen"}, "username-non-ascii"),
    case("SipConnection", {"domain": "SIP.example.test"}, "domain-upper-case"),
    case(
        "SipConnection",
        {
            **IP,
            "authentication.allowedAddresses": [
                "127.0.0.2/32",
                "192.0.2.0/24",
                "198.51.100.7",
                "0.0.0.0/0",
                "192.0.2.0/255.255.255.0",
                "2001:db8::/32",
                "::1",
                "::ffff:192.0.2.1",
            ],
        },
        "ip",
    ),
    case("SipConnection", {"authentication.allowedAddresses": []}, "credentials-with-empty-addresses"),
    case("SipConnection", {"authentication.allowedAddresses": ["192.0.2.0/24"]}, "credentials-with-addresses"),
    case("SipConnection", {"maxContacts": 1, "inbound": False, "outbound": False}, "edges"),
]


@pytest.mark.parametrize("obj", REJECTED)
def test_rejected_by_the_crd_and_by_the_loader(tmp_path: Path, obj: dict[str, Any]) -> None:
    assert rejections(obj)
    with pytest.raises(ManifestError, match=f"{obj['kind']} voip/"):
        load_with_company(tmp_path, obj)


@pytest.mark.parametrize("obj", ACCEPTED)
def test_accepted_by_the_crd_and_by_the_loader(tmp_path: Path, obj: dict[str, Any]) -> None:
    assert rejections(obj) == []
    load_with_company(tmp_path, obj)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            changed("SipDomain", {"registration.minExpires": 4000}),
            "spec.registration: registration expiry bounds must satisfy minExpires <= defaultExpires <= maxExpires",
        ),
        (
            changed("SipConnection", NO_SECRET),
            "spec.authentication: passwordSecretRef is required when type is credentials",
        ),
        (
            changed("SipConnection", IP),
            "spec.authentication: allowedAddresses must list at least one address when type is ip",
        ),
        (
            changed("SipConnection", {"authentication.type": "ip", "authentication.allowedAddresses": ["::1"]}),
            "spec.authentication: passwordSecretRef is not used when type is ip; remove it",
        ),
    ],
)
def test_each_cross_field_rule_alone_rejects_its_case(obj: dict[str, Any], message: str) -> None:
    assert rejections(obj) == [message]


@pytest.mark.parametrize(
    "spec",
    [
        {"domain": "Sip.Example.TEST"},
        {"domain": "sip.example.test", "registration": {}},
        {"domain": "sip.example.test", "registration": {"enabled": False}},
        {"domain": "sip.example.test", "authentication": {}},
    ],
)
def test_crd_defaults_are_the_loaders_defaults_for_a_domain(tmp_path: Path, spec: dict[str, Any]) -> None:
    obj = {**DOMAIN, "spec": spec}
    defaulted = with_defaults(obj, openapi_schema("SipDomain"))
    assert defaulted != obj  # something was filled in
    assert catalog_of(tmp_path / "raw", obj) == catalog_of(tmp_path / "defaulted", defaulted)


@pytest.mark.parametrize(
    "spec",
    [
        {
            "domain": "sip.example.test",
            "username": "alice",
            "authentication": {"passwordSecretRef": {"name": "alice-sip"}},
        },
        {
            "domain": "sip.example.test",
            "username": "pbx",
            "authentication": {"type": "ip", "allowedAddresses": ["::1"]},
        },
    ],
)
def test_crd_defaults_are_the_loaders_defaults_for_a_connection(tmp_path: Path, spec: dict[str, Any]) -> None:
    obj = {**CONNECTION, "spec": spec}
    defaulted = with_defaults(obj, openapi_schema("SipConnection"))
    assert defaulted != obj
    assert catalog_of(tmp_path / "raw", DOMAIN, obj) == catalog_of(tmp_path / "defaulted", DOMAIN, defaulted)


def catalog_of(directory: Path, *objects: dict[str, Any]) -> manifests.Catalog:
    directory.mkdir()
    (directory / "m.yaml").write_text(yaml.safe_dump_all([SECRET, *objects]))
    return load_catalog(directory)


def loader_accepts(parser: Any, value: Any) -> bool:
    try:
        parser(value, "field")
    except manifests.SpecError:
        return False
    return True


# The loader's parser and the CRD node of each field whose rule is a regular expression.
PATTERN_FIELDS = {
    "domain": (manifests._domain_name, spec_node("SipDomain", "domain"), "aZ09-._\n"),
    "connection-domain": (manifests._domain_name, spec_node("SipConnection", "domain"), "a.-"),
    "username": (manifests._username, spec_node("SipConnection", "username"), "a@: \t\n\x7f\u00a0\u2028\u3000ü+"),
    "secret-name": (
        manifests._object_name,
        spec_node("SipConnection", "authentication.passwordSecretRef.name"),
        "aZ0-._",
    ),
    "secret-key": (
        manifests._secret_key,
        spec_node("SipConnection", "authentication.passwordSecretRef.key"),
        "aZ0-._/ ",
    ),
    "certificate": (manifests._object_name, spec_node("SipDomain", "transports.tls.certificateSecret"), "a0-.B"),
}


@pytest.mark.parametrize("name", PATTERN_FIELDS)
@given(data=st.data())
@settings(deadline=None)  # the regex compiles once per field: a first example past 200 ms on a loaded machine
def test_pattern_fields_agree_with_the_loader(name: str, data: st.DataObject) -> None:
    parser, node, alphabet = PATTERN_FIELDS[name]
    # Free text, and dotted words of up to 70 characters to reach the length limits.
    words = st.lists(st.text(alphabet=alphabet, min_size=1, max_size=70), min_size=1, max_size=5).map(".".join)
    text = data.draw(st.text(alphabet=alphabet, max_size=300) | words)
    assert loader_accepts(parser, text) == node_accepts(node, text), repr(text)


def test_username_pattern_agrees_with_the_loader_on_every_character() -> None:
    # The loader's \s is Python's Unicode whitespace; the CRD spells out the same set for RE2.
    node = spec_node("SipConnection", "username")
    pattern = re2.compile(node["pattern"])
    disagree = [
        hex(code)
        for code in range(0x3100)  # every character Python counts as whitespace is below U+3100
        if not 0xD800 <= code <= 0xDFFF  # lone surrogates cannot be in a UTF-8 manifest
        if loader_accepts(manifests._username, chr(code)) != bool(pattern.search(chr(code)))
    ]
    assert disagree == []


ADDRESSES_BOTH_ACCEPT = [
    "192.0.2.0/24", "192.0.2.7", "192.0.2.7/32", "0.0.0.0/0", "10.0.0.0/8", "255.255.255.255",
    "192.0.2.0/255.255.255.0", "192.0.2.0/0.0.0.255", "::", "::1", "::/0", "2001:db8::/32",
    "2001:DB8:0:0:0:0:0:1", "::ffff:192.0.2.1", "fe80::1%eth0", "2001:db8::/128",
]  # fmt: skip
ADDRESSES_BOTH_REJECT = [
    "", "10.0.0.300/8", "192.0.2.0/33", "192.0.2.0/-1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "2001:db8::/129",
    "pbx.example.test", "192.0.2.0/", "192.0.2.0 /24", " 192.0.2.0", "192.0.2.0/24\n", "2001:db8::g",
]  # fmt: skip
# What only the loader refuses: rules a pattern cannot state (host bits, IPv6 grammar, masks).
ADDRESSES_ONLY_THE_LOADER_REJECTS = [
    "192.0.2.1/24", "2001:db8::1/32", "192.0.2.0/255.0.255.0", ":::", "1::2::3", "2001:db8::1::/64",
]  # fmt: skip


def test_address_pattern_accepts_what_the_loader_accepts() -> None:
    node = spec_node("SipConnection", "authentication.allowedAddresses")["items"]
    verdicts = {
        text: (loader_accepts(manifests._network, text), node_accepts(node, text))
        for text in ADDRESSES_BOTH_ACCEPT + ADDRESSES_BOTH_REJECT + ADDRESSES_ONLY_THE_LOADER_REJECTS
    }
    assert {text for text, v in verdicts.items() if v == (True, True)} == set(ADDRESSES_BOTH_ACCEPT)
    assert {text for text, v in verdicts.items() if v == (False, False)} == set(ADDRESSES_BOTH_REJECT)
    assert {text for text, v in verdicts.items() if v == (False, True)} == set(ADDRESSES_ONLY_THE_LOADER_REJECTS)


@pytest.mark.parametrize(
    ("uri", "loader", "crd"),
    [
        ("sip:gw.example.test:5060", True, True),
        ("SIPS:gw.example.test;transport=tcp", True, True),
        ("sip:carrier@192.0.2.1", True, True),
        ("", False, False),
        ("http://gw.example.test", False, False),
        ("tel:+4930123", False, False),
        ("gw.example.test", False, False),
        ("sip:", False, False),
        # The known differences, written down in README.md: the URI grammar is the
        # loader's alone, and the loader strips leading spaces the pattern refuses.
        ("sip:gw.example.test:99999", False, True),
        (" sip:gw.example.test", True, False),
    ],
)
def test_gateway_pattern_checks_the_scheme_and_the_loader_the_rest(uri: str, loader: bool, crd: bool) -> None:
    node = spec_node("SipDomain", "outbound.gateway")
    assert (loader_accepts(manifests._sip_uri, uri), node_accepts(node, uri)) == (loader, crd)
