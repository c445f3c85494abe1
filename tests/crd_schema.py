"""The CRDs in crds/ as the API server would apply them, imitated for the tests: schemas, defaults, CEL rules.

Defaults are applied as the API server's defaulting does, the openAPIV3Schema is
checked with jsonschema (patterns with RE2, the regex engine Kubernetes uses), and
the x-kubernetes-validations rules are evaluated with cel-python (celpy).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import re2
import yaml

from tests.helpers import ROOT

CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in (yaml.safe_load(path.read_text()) for path in CRD_FILES)}
OUR_KINDS = ("SipDomain", "SipConnection")
# CEL validation rules are on by default from Kubernetes 1.25, the oldest the CRDs are for.
OLDEST_KUBERNETES = "1.25"
NEWEST_KUBERNETES = kubernetes_validate.latest_version()


def openapi_schema(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# --- The API server, imitated ---------------------------------------------------


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """An openAPIV3Schema node as JSON Schema, keeping the API server's meaning of the OpenAPI extras."""
    schema = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-") and key != "nullable"}
    if node.get("nullable"):
        schema["type"] = [node["type"], "null"]
    if "properties" in node:
        schema["properties"] = {name: to_json_schema(child) for name, child in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            # Unknown fields: the API server prunes them, and kubectl's strict field validation refuses them.
            schema["additionalProperties"] = False
    if "items" in node:
        schema["items"] = to_json_schema(node["items"])
    if node.get("x-kubernetes-list-type") == "set":  # the API server refuses duplicates in a set
        schema["uniqueItems"] = True
    return schema


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    # Kubernetes matches patterns with Go's RE2: `$` is the end of the text (Python's
    # re also matches before a final newline) and `\x{...}` escapes are RE2's.
    if validator.is_type(instance, "string") and not re2.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


SchemaValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _re2_pattern})


def with_defaults(value: Any, node: dict[str, Any]) -> Any:
    """`value` with the schema's defaults filled in, as the API server does before validating.

    Its algorithm: an absent property with a default gets it, then every present
    property (defaulted ones too, so `default: {}` brings its fields' defaults) is
    defaulted in turn.
    """
    if isinstance(value, dict) and "properties" in node:
        properties = node["properties"]
        filled = {name: copy.deepcopy(child["default"]) for name, child in properties.items() if "default" in child}
        filled.update(value)
        return {
            name: with_defaults(item, properties[name]) if name in properties else item for name, item in filled.items()
        }
    if isinstance(value, list) and "items" in node:
        return [with_defaults(item, node["items"]) for item in value]
    return value


_CEL = celpy.Environment()


@functools.cache
def cel_program(rule: str) -> celpy.Runner:
    return _CEL.program(_CEL.compile(rule))


def cel_failures(value: Any, node: dict[str, Any], path: str) -> list[str]:
    """The messages of the x-kubernetes-validations rules `value` breaks, at every level.

    A rule that cannot be evaluated (a missing field) fails, as it does in the API server.
    """
    failures = []
    for validation in node.get("x-kubernetes-validations", []):
        try:
            result = cel_program(validation["rule"]).evaluate({"self": celpy.json_to_cel(value)})
            passed = isinstance(result, celpy.celtypes.BoolType) and bool(result)
        except celpy.CELEvalError:
            passed = False
        if not passed:
            failures.append(f"{path or '<root>'}: {validation['message']}")
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                failures += cel_failures(value[name], child, f"{path}.{name}".lstrip("."))
    elif isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            failures += cel_failures(item, node["items"], f"{path}[{index}]")
    return failures


@functools.cache
def schema_validator(kind: str) -> Any:
    return SchemaValidator(to_json_schema(openapi_schema(kind)))


def rejections(obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse `obj` (a SipDomain or SipConnection); [] when it would store it."""
    schema = openapi_schema(obj["kind"])
    defaulted = with_defaults(obj, schema)
    errors = [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in schema_validator(obj["kind"]).iter_errors(defaulted)
    ]
    return errors + cel_failures(defaulted, schema, "")


def node_accepts(node: dict[str, Any], value: Any) -> bool:
    return SchemaValidator(to_json_schema(node)).is_valid(value)


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from schema_nodes(node["items"], f"{path}[]")


def spec_node(kind: str, dotted: str) -> dict[str, Any]:
    node = openapi_schema(kind)["properties"]["spec"]
    for name in dotted.split("."):
        node = node["properties"][name]
    return node
