"""The state shell's typed errors, decided by the gRPC status in the SDK's error (each
shape the SDK raises, per DAPR-NOTES §4), never by the error's text."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from dapr.clients.exceptions import DaprGrpcError, DaprInternalError
from grpc.aio import AioRpcError, Metadata

from realtime_sync.metrics import Metrics
from realtime_sync.state import ConflictError, DaprState, StateUnavailable, status_code


class CallError(grpc.RpcError):
    """A sync-client RpcError, the shape DaprGrpcError wraps."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> None:
        return None


def aio_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def wrapped_by_aio_save_state(code: grpc.StatusCode, details: str) -> DaprInternalError:
    """What the aio `save_state` raises: DaprInternalError from the AioRpcError."""
    try:
        try:
            raise aio_error(code, details)
        except AioRpcError as err:
            raise DaprInternalError(err.details()) from err
    except DaprInternalError as wrapped:
        return wrapped


def dapr_grpc_error(code: grpc.StatusCode, details: str) -> DaprGrpcError:
    return DaprGrpcError(CallError(code, details))


STALE_ETAG = (
    "failed saving state in state store statestore: possible etag mismatch. "
    "error from state store: ERR Error running script"
)
MALFORMED_ETAG = "failed saving state in state store statestore: invalid etag value: abc"


class FailingClient:
    """An aio DaprClient whose every state call raises `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls: list[str] = []

    async def save_state(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("save_state")
        raise self.error

    async def get_state(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("get_state")
        raise self.error


def state_raising(error: BaseException) -> DaprState:
    return DaprState(
        store="statestore", timeout_s=1.0, metrics=Metrics(), client=FailingClient(error)
    )


@pytest.mark.parametrize(
    "error",
    [
        wrapped_by_aio_save_state(grpc.StatusCode.ABORTED, STALE_ETAG),
        dapr_grpc_error(grpc.StatusCode.ABORTED, STALE_ETAG),
        aio_error(grpc.StatusCode.ABORTED, "aborted"),
        # ABORTED decides, whatever the message says.
        wrapped_by_aio_save_state(grpc.StatusCode.ABORTED, "write refused"),
    ],
    ids=["aio-save-state", "dapr-grpc-error", "aio-rpc-error", "any-message"],
)
async def test_aborted_on_a_guarded_write_is_a_conflict(error: BaseException) -> None:
    with pytest.raises(ConflictError):
        await state_raising(error).save("shares:1", b"[]", etag="3")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            wrapped_by_aio_save_state(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_ETAG),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            wrapped_by_aio_save_state(grpc.StatusCode.UNAVAILABLE, "etag: connection refused"),
            grpc.StatusCode.UNAVAILABLE,
        ),
        (
            dapr_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "state store x is not found"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            dapr_grpc_error(grpc.StatusCode.INTERNAL, "aborted transaction"),
            grpc.StatusCode.INTERNAL,
        ),
        (RuntimeError("etag aborted"), None),
    ],
    ids=["malformed-etag", "sidecar-gone", "unknown-store", "internal", "not-grpc"],
)
async def test_any_other_failure_is_state_unavailable_even_if_its_text_says_etag(
    error: BaseException, code: grpc.StatusCode | None
) -> None:
    with pytest.raises(StateUnavailable) as info:
        await state_raising(error).save("shares:1", b"[]", etag="3")
    assert info.value.code == code


async def test_aborted_on_an_unguarded_write_is_not_a_conflict() -> None:
    """Without an etag there is nothing to conflict with: it is a store failure."""
    error = wrapped_by_aio_save_state(grpc.StatusCode.ABORTED, STALE_ETAG)
    with pytest.raises(StateUnavailable) as info:
        await state_raising(error).save("shares:1", b"[]")
    assert info.value.code == grpc.StatusCode.ABORTED


async def test_a_failed_read_names_the_status_in_its_message() -> None:
    error = dapr_grpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    with pytest.raises(StateUnavailable, match="UNAVAILABLE: failed to connect") as info:
        await state_raising(error).get("shares:1")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_without_a_client_the_call_is_unavailable_without_a_status() -> None:
    state = DaprState(store="statestore", timeout_s=1.0, metrics=Metrics())
    with pytest.raises(StateUnavailable) as info:
        await state.get("shares:1")
    assert info.value.code is None


def test_status_code_reads_every_shape_the_sdk_raises() -> None:
    code = grpc.StatusCode.ABORTED
    assert status_code(wrapped_by_aio_save_state(code, "x")) == code
    assert status_code(dapr_grpc_error(code, "x")) == code
    assert status_code(aio_error(code, "x")) == code
    assert status_code(DaprInternalError("no cause")) is None
    assert status_code(ValueError("ABORTED")) is None
