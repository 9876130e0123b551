"""The gRPC Dapr API (``dapr.proto.runtime.v1.Dapr``) the service's Dapr client calls.

Implemented: ``GetState``, ``GetBulkState``, ``SaveState``, ``DeleteState``,
``DeleteBulkState``, ``ExecuteStateTransaction``, ``PublishEvent``, ``BulkPublishEvent``
(+ ``Alpha1``) and a minimal ``GetMetadata``; every other method answers UNIMPLEMENTED.
Errors carry a rich status with ``ErrorInfo(reason, domain="dapr.io")``.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import grpc
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2, pubsub_pb2, state_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status  # type: ignore[import-untyped]  # no stubs

from .envelope import Publication, rfc3339
from .errors import ApiError, bad_request, pubsub_not_found, unauthenticated
from .runtime import SidecarRuntime
from .state import Concurrency, StateError, StateWrite, StoredValue, parse_ttl
from .wellknown import AnyMessage, Empty

ERROR_DOMAIN = "dapr.io"
_CONCURRENCY = {
    common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE: Concurrency.FIRST_WRITE,
    common_pb2.StateOptions.CONCURRENCY_LAST_WRITE: Concurrency.LAST_WRITE,
}

Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[["DaprApiServicer", Request, Any], Response]


def abort(context: Any, error: ApiError) -> NoReturn:
    """Fail the call with daprd's status code, message and ErrorInfo reason."""
    detail = AnyMessage()
    detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    status = status_pb2.Status(
        code=error.grpc_code.value[0], message=error.message, details=[detail]
    )
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _translating(method: Method[Request, Response]) -> Method[Request, Response]:
    @functools.wraps(method)
    def wrapper(self: DaprApiServicer, request: Request, context: Any) -> Response:
        try:
            return method(self, request, context)
        except ApiError as exc:
            abort(context, exc)

    return wrapper


def _timeout(context: Any) -> float | None:
    remaining = context.time_remaining()
    return float(remaining) if remaining is not None else None


def _metadata_value(context: Any, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return ""


def _write(item: Any, reason: str, *, delete: bool = False) -> StateWrite:
    try:
        ttl = None if delete else parse_ttl(dict(item.metadata))
    except StateError as exc:
        raise bad_request(reason, exc.message) from None
    etag = item.etag.value if item.HasField("etag") else ""
    return StateWrite(
        key=item.key,
        value=None if delete else bytes(item.value),
        etag=etag or None,
        concurrency=_CONCURRENCY.get(item.options.concurrency, Concurrency.UNSPECIFIED),
        ttl_s=ttl,
    )


def _item_metadata(value: StoredValue) -> dict[str, str]:
    if value.expires_at is None:
        return {}
    return {"ttlExpireTime": rfc3339(datetime.fromtimestamp(value.expires_at, UTC))}


class DaprApiServicer(dapr_pb2_grpc.DaprServicer):
    def __init__(self, runtime: SidecarRuntime) -> None:
        self._runtime = runtime

    # --- state ------------------------------------------------------------------------

    @_translating
    def GetState(self, request: Any, context: Any) -> state_pb2.GetStateResponse:
        value = self._runtime.get_state(request.store_name, request.key, _timeout(context))
        if value is None:
            return state_pb2.GetStateResponse()
        return state_pb2.GetStateResponse(
            data=value.data, etag=value.etag, metadata=_item_metadata(value)
        )

    @_translating
    def GetBulkState(self, request: Any, context: Any) -> state_pb2.GetBulkStateResponse:
        found = self._runtime.get_bulk_state(
            request.store_name, list(request.keys), _timeout(context)
        )
        return state_pb2.GetBulkStateResponse(
            items=[
                state_pb2.BulkStateItem(key=key)
                if value is None
                else state_pb2.BulkStateItem(
                    key=key, data=value.data, etag=value.etag, metadata=_item_metadata(value)
                )
                for key, value in found
            ]
        )

    def _write_all(
        self, store: str, writes: Sequence[StateWrite], operation: str, context: Any
    ) -> Any:
        self._runtime.write_state(store, writes, operation, _timeout(context))
        return Empty()

    @_translating
    def SaveState(self, request: Any, context: Any) -> Any:
        writes = [_write(item, "ERR_STATE_SAVE") for item in request.states]
        return self._write_all(request.store_name, writes, "save", context)

    @_translating
    def DeleteState(self, request: Any, context: Any) -> Any:
        write = _write(
            common_pb2.StateItem(key=request.key, etag=request.etag, options=request.options),
            "ERR_STATE_DELETE",
            delete=True,
        )
        return self._write_all(request.store_name, [write], "delete", context)

    @_translating
    def DeleteBulkState(self, request: Any, context: Any) -> Any:
        writes = [_write(item, "ERR_STATE_DELETE", delete=True) for item in request.states]
        return self._write_all(request.store_name, writes, "delete", context)

    @_translating
    def ExecuteStateTransaction(self, request: Any, context: Any) -> Any:
        writes = []
        for operation in request.operations:
            kind = operation.operationType
            if kind not in ("upsert", "delete"):
                raise bad_request(
                    "ERR_NOT_SUPPORTED_STATE_OPERATION",
                    f"operation type {kind} not supported",
                )
            writes.append(
                _write(operation.request, "ERR_STATE_TRANSACTION", delete=kind == "delete")
            )
        return self._write_all(request.storeName, writes, "transaction", context)

    # --- pub/sub ----------------------------------------------------------------------

    @_translating
    def PublishEvent(self, request: Any, context: Any) -> Any:
        self._runtime.publish(
            Publication(
                pubsub_name=request.pubsub_name,
                topic=request.topic,
                data=bytes(request.data),
                content_type=request.data_content_type,
                metadata=dict(request.metadata),
                traceparent=_metadata_value(context, "traceparent"),
                tracestate=_metadata_value(context, "tracestate"),
            )
        )
        return Empty()

    @_translating
    def BulkPublishEvent(self, request: Any, context: Any) -> pubsub_pb2.BulkPublishResponse:
        if request.pubsub_name != self._runtime.config.pubsub_name:
            raise pubsub_not_found(request.pubsub_name)
        failed = []
        for entry in request.entries:
            try:
                self._runtime.publish(
                    Publication(
                        pubsub_name=request.pubsub_name,
                        topic=request.topic,
                        data=bytes(entry.event),
                        content_type=entry.content_type,
                        metadata={**request.metadata, **entry.metadata},
                        traceparent=_metadata_value(context, "traceparent"),
                        tracestate=_metadata_value(context, "tracestate"),
                    )
                )
            except ApiError as exc:
                failed.append(
                    pubsub_pb2.BulkPublishResponseFailedEntry(
                        entry_id=entry.entry_id, error=exc.message
                    )
                )
        return pubsub_pb2.BulkPublishResponse(failedEntries=failed)

    def BulkPublishEventAlpha1(self, request: Any, context: Any) -> pubsub_pb2.BulkPublishResponse:
        return self.BulkPublishEvent(request, context)

    # --- metadata ---------------------------------------------------------------------

    def GetMetadata(self, request: Any, context: Any) -> metadata_pb2.GetMetadataResponse:
        config = self._runtime.config
        return metadata_pb2.GetMetadataResponse(
            id=config.app_id,
            runtime_version="devsidecar",
            registered_components=[
                metadata_pb2.RegisteredComponents(
                    name=config.pubsub_name, type="pubsub.in-memory", version="v1"
                ),
                metadata_pb2.RegisteredComponents(
                    name=config.state_store_name,
                    type="state.in-memory",
                    version="v1",
                    capabilities=["ETAG", "TRANSACTIONAL", "TTL"],
                ),
            ],
        )


def token_matches(supplied: str | None, expected: str) -> bool:
    """Constant-time comparison of a ``dapr-api-token``."""
    return supplied is not None and hmac.compare_digest(
        supplied.encode("utf-8"), expected.encode("utf-8")
    )


class ApiTokenInterceptor(grpc.ServerInterceptor):
    """Refuse every call without the right ``dapr-api-token`` metadata (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        supplied = None
        for key, value in details.invocation_metadata or ():
            if key == "dapr-api-token":
                supplied = value if isinstance(value, str) else None
        if token_matches(supplied, self._token):
            return handler
        message = (
            "missing api token in request metadata"
            if supplied is None
            else "authentication error: api token mismatch"
        )

        def deny(request: Any, context: Any) -> NoReturn:
            abort(context, unauthenticated(message))

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
