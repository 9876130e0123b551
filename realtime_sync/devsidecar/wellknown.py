"""Protobuf well-known types and gRPC error accessors, typed for ``mypy --strict``.

The protobuf runtime builds its generated classes at import time, so a type checker without
protobuf stubs cannot see them; they are re-exported here once, as ``Any``.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
from google.protobuf import any_pb2, empty_pb2, struct_pb2

Empty: Any = empty_pb2.Empty  # type: ignore[attr-defined]
Struct: Any = struct_pb2.Struct  # type: ignore[attr-defined]
AnyMessage: Any = any_pb2.Any  # type: ignore[attr-defined]


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call (None for an RpcError that is not a Call)."""
    if isinstance(error, grpc.Call):
        code = cast(Any, error).code()
        return code if isinstance(code, grpc.StatusCode) else None
    return None


def status_details(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call):
        details = cast(Any, error).details()
        return details if isinstance(details, str) else ""
    return ""
