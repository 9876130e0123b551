"""Dapr API errors as daprd reports them, one value for both the gRPC and the HTTP API.

gRPC callers get the status code plus a rich ``google.rpc.Status`` carrying
``ErrorInfo(reason, domain="dapr.io")`` (what the SDK's ``DaprGrpcError.error_code()``
reads); HTTP callers get the status and ``{"errorCode": ..., "message": ...}``.
"""

from __future__ import annotations

import grpc


class ApiError(Exception):
    """A failed Dapr API call, translated by each front end to its own wire format."""

    def __init__(
        self,
        grpc_code: grpc.StatusCode,
        http_status: int,
        reason: str,
        message: str,
        *,
        http_error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code
        self.http_status = http_status
        self.reason = reason
        self.message = message
        self.http_error_code = http_error_code or reason


def state_store_not_found(name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        400,
        "DAPR_STATE_NOT_FOUND",
        f"state store {name} is not found",
        http_error_code="ERR_STATE_STORE_NOT_FOUND",
    )


def pubsub_not_found(name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        404,
        "DAPR_PUBSUB_NOT_FOUND",
        f"pubsub {name} is not found",
        http_error_code="ERR_PUBSUB_NOT_FOUND",
    )


def bad_request(reason: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, 400, reason, message)


def unauthenticated(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, 401, "ERR_UNAUTHORIZED", message)
