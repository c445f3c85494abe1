"""The hand-encoded compare-and-swap and serializable read of the etcd store are the messages the generated
protobuf classes build."""

from __future__ import annotations

from aetcd import rpc
from hypothesis import given
from hypothesis import strategies as st

from registrar.store.etcd_session import _serializable_range, compare_and_swap


def generated(key: bytes, revision: int, value: bytes, lease: int) -> rpc.RequestOp:
    """The same operation built from etcd's generated messages."""
    if value:
        write = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))
    else:
        write = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
    return rpc.RequestOp(
        request_txn=rpc.TxnRequest(
            compare=[rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision)],
            success=[write],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
    )


def test_a_put_under_a_lease_is_byte_for_byte_the_generated_one() -> None:
    key = b"/sipreg/v1/bindings/sip.example.test/alice"
    encoded = compare_and_swap(key, 123_456, b'{"bindings":[]}', 7_587_891_234_567_890_123)
    assert encoded == generated(key, 123_456, b'{"bindings":[]}', 7_587_891_234_567_890_123).SerializeToString()


def test_a_first_write_compares_with_revision_zero_and_a_removal_deletes() -> None:
    key = b"/sipreg/v1/bindings/sip.example.test/bob"
    assert rpc.RequestOp.FromString(compare_and_swap(key, 0, b"", 0)) == generated(key, 0, b"", 0)
    assert rpc.RequestOp.FromString(compare_and_swap(key, 0, b"v", 0)) == generated(key, 0, b"v", 0)


@given(
    key=st.binary(min_size=1, max_size=300),
    revision=st.integers(min_value=0, max_value=2**63 - 1),
    value=st.binary(max_size=20_000),
    lease=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_any_operation_reads_back_as_the_generated_message(key: bytes, revision: int, value: bytes, lease: int) -> None:
    assert rpc.RequestOp.FromString(compare_and_swap(key, revision, value, lease)) == generated(
        key, revision, value, lease
    )


@given(st.binary(min_size=1, max_size=5000))
def test_a_serializable_read_is_the_generated_one(key: bytes) -> None:
    generated_read = rpc.RequestOp(request_range=rpc.RangeRequest(key=key, serializable=True))
    assert _serializable_range(key) == generated_read.SerializeToString()
