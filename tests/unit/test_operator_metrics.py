"""Unit tests for the operator's metrics: results and causes of handler runs, status patches, object states."""

from __future__ import annotations

import kopf
from kubernetes.client.exceptions import ApiException

from registrar.store.etcd_session import EtcdUnavailable
from sip_operator.metrics import CAUSES, KINDS, OperatorMetrics, cause_of
from sip_operator.reconciler import ConnectionEntry, DomainEntry, Reconciler


def sample(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def raised_from(cause: Exception) -> kopf.TemporaryError:
    """What the handlers raise: kopf's retry, from the error met."""
    try:
        try:
            raise cause
        except Exception as error:
            raise kopf.TemporaryError(f"will retry: {error}") from error
    except kopf.TemporaryError as retry:
        return retry


def test_a_failed_run_is_counted_with_what_it_met() -> None:
    assert cause_of(raised_from(EtcdUnavailable("etcd unreachable"))) == "etcd"
    assert cause_of(raised_from(ApiException(status=500))) == "kubernetes"
    assert cause_of(ApiException(status=409)) == "kubernetes"
    assert cause_of(ValueError("a bug")) == "other"


def test_every_series_starts_at_zero_and_counts_runs_by_result() -> None:
    metrics = OperatorMetrics()
    for kind in KINDS:
        assert sample(metrics, "sipreg_operator_reconciles_total", kind=kind, result="ok") == 0
        for cause in CAUSES:
            assert sample(metrics, "sipreg_operator_reconcile_errors_total", kind=kind, cause=cause) == 0
    metrics.reconciled("SipConnection", 0.02)
    metrics.reconciled("SipConnection", 0.3, raised_from(EtcdUnavailable("gone")))
    metrics.status_patched("SipDomain", ok=False)
    assert sample(metrics, "sipreg_operator_reconciles_total", kind="SipConnection", result="ok") == 1
    assert sample(metrics, "sipreg_operator_reconciles_total", kind="SipConnection", result="error") == 1
    assert sample(metrics, "sipreg_operator_reconcile_errors_total", kind="SipConnection", cause="etcd") == 1
    assert sample(metrics, "sipreg_operator_reconcile_duration_seconds_count", kind="SipConnection") == 2
    assert sample(metrics, "sipreg_operator_reconcile_duration_seconds_bucket", kind="SipConnection", le="0.025") == 1
    assert sample(metrics, "sipreg_operator_status_patches_total", kind="SipDomain", result="error") == 1
    assert sample(metrics, "sipreg_operator_status_patches_total", kind="SipConnection", result="ok") == 0


def test_object_states_are_read_from_the_reconciler_at_each_scrape() -> None:
    metrics = OperatorMetrics()
    reconciler = Reconciler(None, None, None, adopt=lambda child, owner: None, new_secret=str, metrics=metrics)  # type: ignore[arg-type]
    assert sample(metrics, "sipreg_operator_connections", state="published") == 0
    reconciler.domains[("voip", "d")] = DomainEntry(fqdn="sip.example.test")
    reconciler.domains[("voip", "taken")] = DomainEntry(problem=("Conflict", "already served"))
    reconciler.connections[("voip", "alice")] = ConnectionEntry(published=("sip.example.test", "alice"))
    reconciler.connections[("voip", "bob")] = ConnectionEntry(published=("sip.example.test", "bob"))
    reconciler.connections[("voip", "nosecret")] = ConnectionEntry(problem=("SecretNotFound", "no Secret"))
    reconciler.connections[("voip", "new")] = ConnectionEntry()  # being reconciled right now: neither yet
    assert sample(metrics, "sipreg_operator_domains", state="published") == 1
    assert sample(metrics, "sipreg_operator_domains", state="problem") == 1
    assert sample(metrics, "sipreg_operator_connections", state="published") == 2
    assert sample(metrics, "sipreg_operator_connections", state="problem") == 1
