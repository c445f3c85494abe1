"""The shipped Grafana dashboard queries only metrics that a running registrar or operator exports.

A small PromQL tokenizer finds every metric selector in every panel query and
template variable; a real `sipreg serve --store etcd://` and a real `sipreg
operator` (against the emulated Kubernetes API) are scraped; each name must be
a metric family one of them declares. Families, not samples: prometheus-client
declares a labelled family (`# HELP`/`# TYPE`) from the start but shows a
labelled series only after its first event, and a dashboard may rightly show
a series that has not happened yet (INVITEs answered 503, etcd errors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.etcd_server import EtcdServer
from tests.helpers import ROOT, start_registrar, stop_registrar
from tests.integration.sip_client import UserAgent, status_of
from tests.integration.sipp import manifest_passwords
from tests.k8s.kube import OperatorProcess, wait_for

pytestmark = pytest.mark.k8s

DASHBOARD = ROOT / "charts" / "sipreg" / "dashboards" / "sipreg.json"
DOMAIN = "sip.example.test"

# -- a small PromQL tokenizer ------------------------------------------------------------------

# Words that are PromQL itself, never metric names. Aggregations may put `by (...)` before
# their parentheses; a function is any word followed by "(".
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "limitk", "limit_ratio",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}  # followed by (label, ...)
NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER = re.compile(r"[0-9.]+(?:[eE][-+]?[0-9]+)?[A-Za-z0-9_]*")  # 0.99, 1e3, 0x1f, 5m, 1h30m
OPERATOR = re.compile(r"=~|!~|!=|=")


@dataclass(frozen=True)
class Selector:
    """A metric name as a query selects it, with its label matchers (label, operator, value)."""

    name: str
    matchers: tuple[tuple[str, str, str], ...] = ()

    def matcher(self, label: str) -> tuple[str, str] | None:
        return next(((op, value) for name, op, value in self.matchers if name == label), None)


def selectors(expr: str) -> list[Selector]:
    """Every metric selector in a PromQL expression (Grafana variables allowed), in order."""
    found: list[Selector] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":  # a comment, to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif c in "\"'`":
            i = _string(expr, i)[1]
        elif c == "$":  # $var, ${var}, ${var:format}, $__rate_interval
            variable = NAME.match(expr, i + 1)
            i = _closing(expr, i + 1) if expr.startswith("{", i + 1) else variable.end() if variable else i + 1
        elif c == "[":  # a range, a subquery's range and step, Grafana's [[var]]: no names inside
            i = _closing(expr, i)
        elif c == "{":  # a selector by matchers alone: {__name__=~"a|b", ...}
            matchers, i = _matchers(expr, i)
            found += _named_by_matchers("", matchers, expr)
        elif c.isdigit() or (c == "." and expr[i + 1 : i + 2].isdigit()):
            i = NUMBER.match(expr, i).end()
        elif match := NAME.match(expr, i):
            word, i = match.group(), match.end()
            following = _skip_space(expr, i)
            if word in LABEL_LISTS:
                if expr.startswith("(", following):
                    i = _closing(expr, following)
            elif word.lower() in KEYWORDS or word in AGGREGATIONS or expr.startswith("(", following):
                pass  # PromQL, or a function call
            elif expr.startswith("{", following):
                matchers, i = _matchers(expr, following)
                found += _named_by_matchers(word, matchers, expr)
            else:
                found.append(Selector(word))
        else:
            i += 1  # operators, parentheses, commas, @
    return found


def variable_selectors(query: str) -> list[Selector]:
    """The selectors in a Grafana Prometheus variable query (label_values, query_result, or PromQL)."""
    call = re.fullmatch(r"\s*(label_values|query_result|label_names|metrics)\s*\((.*)\)\s*", query, re.S)
    if call is None:
        return selectors(query)
    function, arguments = call.groups()
    if function == "metrics":
        raise ValueError(f"metrics() matches names by a regex, which cannot be checked: {query}")
    if function == "label_names":
        return []
    if function == "query_result":
        return selectors(arguments)
    split = _top_level_commas(arguments)
    return selectors(arguments[: split[-1]]) if split else []  # label_values(label): no metric


def _named_by_matchers(word: str, matchers: tuple[tuple[str, str, str], ...], expr: str) -> list[Selector]:
    """The selectors a `name{...}` or `{__name__...}` stands for: literal names only, or it cannot be checked."""
    names = [word] if word else []
    others = tuple(m for m in matchers if m[0] != "__name__")
    for _, op, value in (m for m in matchers if m[0] == "__name__"):
        if op == "=":
            names.append(value)
        elif op == "=~" and all(NAME.fullmatch(name) for name in value.split("|")):
            names += value.split("|")  # a plain alternation of names
        else:
            raise ValueError(f"a metric name matched by a pattern cannot be checked: {expr}")
    if not names:
        raise ValueError(f"a selector without a metric name: {expr}")
    return [Selector(name, others) for name in names]


def _matchers(expr: str, i: int) -> tuple[tuple[tuple[str, str, str], ...], int]:
    """The matchers of the {...} that starts at i, and the index after it."""
    matchers = []
    i += 1
    while True:
        i = _skip_space(expr, i)
        if i >= len(expr):
            raise ValueError(f"unclosed {{: {expr}")
        if expr.startswith(",", i):
            i += 1
            continue
        if expr.startswith("}", i):
            return tuple(matchers), i + 1
        if expr[i] in "\"'`":  # {"quoted.name"} (Prometheus 3), or a quoted label name
            text, i = _string(expr, i)
            if not OPERATOR.match(expr, _skip_space(expr, i)):
                matchers.append(("__name__", "=", text))
                continue
            label = text
        else:
            match = LABEL.match(expr, i)
            if match is None:
                raise ValueError(f"bad label matcher at {i}: {expr}")
            label, i = match.group(), match.end()
        operator = OPERATOR.match(expr, _skip_space(expr, i))
        if operator is None:
            raise ValueError(f"no matcher operator after {label!r}: {expr}")
        value, i = _string(expr, _skip_space(expr, operator.end()))
        matchers.append((label, operator.group(), value))


def _string(expr: str, i: int) -> tuple[str, int]:
    """The text of the string literal at i (escapes undone, raw for backquotes) and the index after it."""
    quote, j, text = expr[i], i + 1, []
    while j < len(expr) and expr[j] != quote:
        if expr[j] == "\\" and quote != "`":
            j += 1
        text.append(expr[j])
        j += 1
    if j >= len(expr):
        raise ValueError(f"unterminated string at {i}: {expr}")
    return "".join(text), j + 1


def _closing(expr: str, i: int) -> int:
    """The index after the bracket that closes the one at i (strings skipped)."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [pairs[expr[i]]]
    j = i + 1
    while stack:
        if j >= len(expr):
            raise ValueError(f"unbalanced {expr[i]} at {i}: {expr}")
        c = expr[j]
        if c in "\"'`":
            j = _string(expr, j)[1]
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif c == stack[-1]:
            stack.pop()
        j += 1
    return j


def _top_level_commas(text: str) -> list[int]:
    commas, i = [], 0
    while i < len(text):
        c = text[i]
        if c in "\"'`":
            i = _string(text, i)[1]
        elif c in "([{":
            i = _closing(text, i)
        else:
            if c == ",":
                commas.append(i)
            i += 1
    return commas


def _skip_space(expr: str, i: int) -> int:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return i


def names(expr: str) -> list[str]:
    return [selector.name for selector in selectors(expr)]


# -- the dashboard -------------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> Iterator[dict]:
    """Every panel, those inside collapsed rows too."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variable_query(variable: dict) -> str:
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, dict) else query or ""


def panel_selectors(board: dict) -> list[tuple[str, Selector]]:
    """(panel title, selector) for every metric selector in every panel query."""
    return [(panel["title"], selector) for panel in panels(board) for target in panel.get("targets", [])
            for selector in selectors(target["expr"])]


def variable_selectors_of(board: dict) -> list[tuple[str, Selector]]:
    return [(f"${variable['name']}", selector) for variable in board["templating"]["list"]
            if variable["type"] == "query" for selector in variable_selectors(variable_query(variable))]


# -- tests ---------------------------------------------------------------------------------------


def test_the_tokenizer_finds_metric_names_and_only_those() -> None:
    assert names('sum by (domain, status) (rate(sipreg_registrations_total{namespace=~"$namespace", '
                 'domain=~"${domain:regex}"}[$__rate_interval]))') == ["sipreg_registrations_total"]
    assert names('histogram_quantile(0.99, sum without (pod) (rate(a_bucket{le!="+Inf"}[5m:1m] offset 1h)))') == [
        "a_bucket"
    ]
    assert names("x / on (pod) group_left (node) y > bool 0.5") == ["x", "y"]
    assert names("sum(rate(x[5m])) by (le) and count(z) unless topk(3, w) or vector(0)") == ["x", "z", "w"]
    assert names('label_replace(src_metric, "dst", "$1", "src", "(.*)") * 1e3') == ["src_metric"]
    assert names('count_values("version", build_info) # sum(commented_out)\n + time()') == ["build_info"]
    assert names('rate(braces{path="}{", q=\'"\'}[[interval]]) - max_over_time(other[1h30m])') == ["braces", "other"]
    assert names("sum by (status) (a) + sum(b) by (status)") == ["a", "b"]
    assert names("count(c) * on() group_right d") == ["c", "d"]
    by_name = selectors('{__name__=~"first|second", namespace="voip"}')
    assert [s.name for s in by_name] == ["first", "second"]
    assert by_name[0].matcher("namespace") == ("=", "voip") and by_name[0].matcher("__name__") is None
    assert names('{"utf8.metric"}') == ["utf8.metric"]
    with pytest.raises(ValueError):
        selectors('{__name__=~"sipreg_.*"}')  # a pattern: no way to say which names it means
    with pytest.raises(ValueError):
        selectors('sum(x{job="a"')


def test_variable_queries_give_the_metric_and_not_the_label() -> None:
    query = 'label_values(sipreg_configured_connections{namespace=~"$namespace"}, domain)'
    assert variable_selectors(query) == [
        Selector("sipreg_configured_connections", (("namespace", "=~", "$namespace"),))
    ]
    assert variable_selectors("label_values(namespace)") == []
    assert [s.name for s in variable_selectors("query_result(topk(5, sum by (pod) (m)))")] == ["m"]
    with pytest.raises(ValueError):
        variable_selectors("metrics(sipreg_.*)")


def test_the_dashboard_is_templated_on_datasource_namespace_and_domain() -> None:
    board = dashboard()
    assert (board["uid"], board["title"]) == ("sipreg", "sipreg")
    assert board["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert {"datasource", "namespace", "domain"} <= set(variables)
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert re.fullmatch(r"label_values\(.*, namespace\)", variable_query(variables["namespace"]))
    assert re.fullmatch(r'label_values\(\w+\{namespace=~"\$namespace"\}, domain\)', variable_query(variables["domain"]))
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_every_query_is_filtered_by_namespace() -> None:
    found = panel_selectors(dashboard()) + [
        (where, selector) for where, selector in variable_selectors_of(dashboard()) if where != "$namespace"
    ]
    assert len(found) >= 30
    for where, selector in found:
        assert selector.matcher("namespace") == ("=~", "$namespace"), f"{where}: {selector}"


@pytest.fixture
def registrar_on_etcd(tmp_path: Path, etcd: EtcdServer):
    running = start_registrar(tmp_path, "--store", etcd.url)
    try:
        yield running
    finally:
        stop_registrar(running)
    assert "Traceback" not in running.log(), running.log()


def families(exposition: str) -> dict[str, tuple[str, set[str]]]:
    """Metric family -> (type, label names seen in its samples), as /metrics declares them."""
    return {
        family.name + ("_total" if family.type == "counter" else ""): (
            family.type, {label for sample in family.samples for label in sample.labels if label != "le"}
        )
        for family in text_string_to_metric_families(exposition)
    }


def test_every_metric_the_dashboard_queries_is_exported_by_a_running_registrar_or_operator(
    registrar_on_etcd, operator_process: OperatorProcess
) -> None:
    registrar = registrar_on_etcd
    passwords = manifest_passwords(ROOT / "manifests")
    # A few events, so that labelled series show which labels they carry.
    alice = UserAgent(registrar.host, registrar.sip_port, "alice", passwords["alice"], DOMAIN)
    assert status_of(alice.register(contact="sip:alice@192.0.2.1:5060", expires=300)) == 200
    assert status_of(UserAgent(registrar.host, registrar.sip_port, "bob", "wrong", DOMAIN).register(
        contact="sip:bob@192.0.2.2:5060", expires=300)) == 401
    # The operator counts the bindings (registrars read them on demand): once its watch has brought alice's.
    wait_for(lambda: "sipreg_bindings{" in operator_process.metrics(), timeout=10, message="the operator's count")
    exported = families(registrar.metrics()) | families(operator_process.metrics())

    board = dashboard()
    used = panel_selectors(board) + variable_selectors_of(board)
    assert len({selector.name for _, selector in used}) >= 20  # the check cannot pass on an empty set
    for where, selector in used:
        name = selector.name
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if family != name and exported.get(family, ("",))[0] == "histogram":
            continue
        assert name in exported, f"{where}: {name} is not exported by the registrar nor the operator"
        assert exported[name][0] != "histogram", f"{where}: {name} is a histogram: query {name}_bucket"

    # Queries of a metric with a domain label follow the $domain variable (panels; the variable itself cannot).
    by_domain = {name for name, (_, labels) in exported.items() if "domain" in labels}
    assert {"sipreg_registrations_total", "sipreg_auth_failures_total", "sipreg_bindings",
            "sipreg_registered_connections", "sipreg_configured_connections"} <= by_domain
    for where, selector in panel_selectors(board):
        if selector.name in by_domain:
            assert selector.matcher("domain") == ("=~", "$domain"), f"{where}: {selector}"
