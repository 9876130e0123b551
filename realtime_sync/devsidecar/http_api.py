"""The Dapr HTTP API subset, plus the dev-only endpoints.

Dapr API (``dapr-api-token`` header required when ``DAPR_API_TOKEN`` is set, except health):

* ``GET /v1.0/healthz/outbound`` → 204 as soon as the APIs listen
* ``GET /v1.0/healthz`` → 204 once the app answered on its port and its subscriptions are
  loaded, else 500 ``ERR_HEALTH_NOT_READY`` (daprd: ready when ``initRuntime`` returns)
* ``POST /v1.0/publish/{pubsub}/{topic}`` (query ``metadata.ttlInSeconds=N`` etc.) → 204
* ``GET /v1.0/state/{store}/{key}`` → 200 + ``ETag``, or 204 when missing
* ``POST /v1.0/state/{store}`` ``[{key, value, etag?, metadata?, options?}]`` → 204 (409 on
  an ETag mismatch)
* ``DELETE /v1.0/state/{store}/{key}`` (``If-Match`` for the ETag) → 204
* ``POST /v1.0/state/{store}/bulk`` ``{"keys": [...]}`` → ``[{key, data, etag}]``
* ``POST /v1.0/state/{store}/transaction`` ``{"operations": [{operation, request}]}`` → 204
* ``GET /v1.0/metadata``
* ``{any verb} /v1.0/invoke/{app-id}/method/{method}`` → the app's ``OnInvoke`` reply

Requests a browser sent for a web page are refused (403 ``ERR_ORIGIN_REFUSED``) unless
the page's origin is in ``--allowed-origins`` (see :mod:`.origins`).

Dev only (not part of Dapr; token-protected like the API):

* ``GET /dev/stats`` → delivery counters per topic and per app instance, pending messages,
  the subscriptions each instance returned, its bulk calls (``bulk_deliveries``: calls,
  entries, largest batch), consumer groups
* ``GET /dev/topics/{topic}/messages`` → the CloudEvents retained on a topic (last 10,000),
  e.g. a dead-letter topic
* ``POST /dev/faults`` ``{"state": "unavailable" | "hang" | "slow" | null, "delay_s": 3}``
  → the state-store fault switch (see :mod:`.faults`)
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import grpc

from .api import token_matches
from .envelope import EnvelopeError, Publication, go_json, load_json, rfc3339
from .errors import ApiError, bad_request, unauthenticated
from .faults import DEFAULT_SLOW_S, StateFault
from .origins import CORS_METHODS, OriginPolicy
from .runtime import SidecarRuntime
from .state import Concurrency, StateError, StateWrite, parse_ttl

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
_HEALTH_PATHS = frozenset({"/v1.0/healthz", "/v1.0/healthz/outbound"})


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(value: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(value).encode("utf-8"), "application/json")


def _malformed(message: str) -> ApiError:
    return bad_request("ERR_MALFORMED_REQUEST", message)


def _parse_body(body: bytes) -> object:
    try:
        return load_json(body or b"null")
    except ValueError as exc:
        raise _malformed(f"failed to parse the JSON body: {exc}") from None


def _string_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _malformed(f"{what} must be an object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def _state_write(item: object, reason: str, *, delete: bool = False) -> StateWrite:
    if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
        raise _malformed("each state item must be an object with a string key")
    etag = item.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise _malformed("etag must be a string")
    options = item.get("options") or {}
    if not isinstance(options, Mapping):
        raise _malformed("options must be an object")
    try:
        concurrency = Concurrency(options.get("concurrency") or "")
    except ValueError:
        raise _malformed(f"unknown concurrency {options.get('concurrency')!r}") from None
    value: bytes | None = None
    try:
        ttl = parse_ttl(_string_map(item.get("metadata"), "metadata"))
        if not delete:
            value = go_json(item.get("value"))
    except StateError as exc:
        raise bad_request(reason, exc.message) from None
    except EnvelopeError as exc:
        raise _malformed(str(exc)) from None
    return StateWrite(
        key=str(item["key"]),
        value=value,
        etag=etag or None,
        concurrency=concurrency,
        ttl_s=None if delete else ttl,
    )


def _stored_json(data: bytes) -> object:
    try:
        return load_json(data)
    except ValueError:
        return data.decode("utf-8", "replace")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "devsidecar"

    @property
    def runtime(self) -> SidecarRuntime:
        server = self.server
        assert isinstance(server, DaprHttpServer)
        return server.runtime

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def _dispatch(self, verb: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._send(_json_reply({"errorCode": "ERR_BODY_TOO_LARGE", "message": "bad body"}, 413))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        server = self.server
        assert isinstance(server, DaprHttpServer)
        origin = self.headers.get("Origin")
        refusal = server.origins.refusal(origin, self.headers.get("Sec-Fetch-Site"))
        if refusal is not None:
            log.warning("HTTP %s %s refused: %s", verb, url.path, refusal)
            self._send(_json_reply({"errorCode": "ERR_ORIGIN_REFUSED", "message": refusal}, 403))
            return
        cors = server.origins.cors_headers(origin)
        if verb == "OPTIONS" and cors:
            # A CORS preflight from an allowed origin (daprd: rs/cors with these methods).
            cors["Access-Control-Allow-Methods"] = CORS_METHODS
            cors["Access-Control-Allow-Headers"] = self.headers.get(
                "Access-Control-Request-Headers", ""
            )
            self._send(Reply(204, headers=cors))
            return
        try:
            token = self.runtime.config.dapr_api_token
            if token and url.path not in _HEALTH_PATHS:
                supplied = self.headers.get("dapr-api-token")
                if not token_matches(supplied, token):
                    raise unauthenticated("invalid api token")
            reply = self._route(verb, url.path, dict(parse_qsl(url.query)), url.query, body)
        except ApiError as exc:
            reply = _json_reply(
                {"errorCode": exc.http_error_code, "message": exc.message}, exc.http_status
            )
        except Exception:
            log.exception("HTTP %s %s failed", verb, url.path)
            reply = _json_reply({"errorCode": "ERR_INTERNAL", "message": "internal error"}, 500)
        reply.headers.update(cors)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.body and self.command != "HEAD":
            self.wfile.write(reply.body)

    def _route(
        self, verb: str, path: str, query: dict[str, str], raw_query: str, body: bytes
    ) -> Reply:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        match verb, parts:
            case "GET", ["v1.0", "healthz", "outbound"]:
                return Reply(204)
            case "GET", ["v1.0", "healthz"]:
                if self.runtime.ready():
                    return Reply(204)
                raise ApiError(
                    grpc.StatusCode.INTERNAL,
                    500,
                    "ERR_HEALTH_NOT_READY",
                    "dapr is not ready: [app]",
                )
            case "POST", ["v1.0", "publish", pubsub, *topic] if topic:
                return self._publish(pubsub, "/".join(topic), query, body)
            case "GET", ["v1.0", "state", store, key]:
                return self._get_state(store, key)
            case "DELETE", ["v1.0", "state", store, key]:
                return self._delete_state(store, key, query)
            case "POST", ["v1.0", "state", store]:
                return self._save_state(store, body)
            case "POST", ["v1.0", "state", store, "bulk"]:
                return self._bulk_get(store, body)
            case "POST", ["v1.0", "state", store, "transaction"]:
                return self._transaction(store, body)
            case "GET", ["v1.0", "metadata"]:
                return _json_reply(self.runtime.metadata())
            case _, ["v1.0", "invoke", app_id, "method", *method] if method:
                data, content_type = self.runtime.invoke(
                    app_id,
                    "/".join(method),
                    data=body,
                    content_type=self.headers.get("Content-Type", ""),
                    verb=verb,
                    query=raw_query,
                )
                return Reply(200, data, content_type or "application/json")
            case "GET", ["dev", "stats"]:
                return _json_reply(self.runtime.stats())
            case "GET", ["dev", "topics", *topic, "messages"] if topic:
                return _json_reply(self.runtime.topic_messages("/".join(topic)))
            case "POST", ["dev", "faults"]:
                return self._set_fault(body)
        return _json_reply(
            {"errorCode": "ERR_NOT_FOUND", "message": f"{verb} {path} is not served"}, 404
        )

    def _publish(self, pubsub: str, topic: str, query: dict[str, str], body: bytes) -> Reply:
        metadata = {
            k.removeprefix("metadata."): v for k, v in query.items() if k.startswith("metadata.")
        }
        self.runtime.publish(
            Publication(
                pubsub_name=pubsub,
                topic=topic,
                data=body,
                content_type=self.headers.get("Content-Type", ""),
                metadata=metadata,
                traceparent=self.headers.get("traceparent", ""),
                tracestate=self.headers.get("tracestate", ""),
            )
        )
        return Reply(204)

    def _get_state(self, store: str, key: str) -> Reply:
        value = self.runtime.get_state(store, key, None)
        if value is None:
            return Reply(204)
        headers = {"ETag": value.etag}
        if value.expires_at is not None:
            expiry = datetime.fromtimestamp(value.expires_at, UTC)
            headers["metadata.ttlExpireTime"] = rfc3339(expiry)
        content_type = "application/json"
        try:
            load_json(value.data)
        except ValueError:
            content_type = "application/octet-stream"
        return Reply(200, value.data, content_type, headers)

    def _delete_state(self, store: str, key: str, query: dict[str, str]) -> Reply:
        item = {
            "key": key,
            "etag": self.headers.get("If-Match"),
            "options": {"concurrency": query.get("concurrency", "")},
        }
        write = _state_write(item, "ERR_STATE_DELETE", delete=True)
        self.runtime.write_state(store, [write], "delete", None)
        return Reply(204)

    def _save_state(self, store: str, body: bytes) -> Reply:
        items = _parse_body(body)
        if not isinstance(items, list):
            raise _malformed("the body must be a JSON array of state items")
        writes = [_state_write(item, "ERR_STATE_SAVE") for item in items]
        self.runtime.write_state(store, writes, "save", None)
        return Reply(204)

    def _bulk_get(self, store: str, body: bytes) -> Reply:
        request = _parse_body(body)
        keys = request.get("keys") if isinstance(request, Mapping) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _malformed('the body must be {"keys": [string, ...]}')
        found = self.runtime.get_bulk_state(store, keys, None)
        return _json_reply(
            [
                {"key": key}
                if value is None
                else {"key": key, "data": _stored_json(value.data), "etag": value.etag}
                for key, value in found
            ]
        )

    def _transaction(self, store: str, body: bytes) -> Reply:
        request = _parse_body(body)
        operations = request.get("operations") if isinstance(request, Mapping) else None
        if not isinstance(operations, list):
            raise _malformed('the body must be {"operations": [...]}')
        writes = []
        for operation in operations:
            if not isinstance(operation, Mapping) or operation.get("operation") not in (
                "upsert",
                "delete",
            ):
                raise bad_request(
                    "ERR_NOT_SUPPORTED_STATE_OPERATION", "operation must be upsert or delete"
                )
            writes.append(
                _state_write(
                    operation.get("request"),
                    "ERR_STATE_TRANSACTION",
                    delete=operation.get("operation") == "delete",
                )
            )
        self.runtime.write_state(store, writes, "transaction", None)
        return Reply(204)

    def _set_fault(self, body: bytes) -> Reply:
        request = _parse_body(body)
        raw = request.get("state") if isinstance(request, Mapping) else "invalid"
        try:
            fault = None if raw is None else StateFault(str(raw))
        except ValueError:
            raise _malformed('"state" must be "unavailable", "hang", "slow" or null') from None
        delay = request.get("delay_s", DEFAULT_SLOW_S) if isinstance(request, Mapping) else 0
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 < delay <= 30:
            raise _malformed('"delay_s" must be a number of seconds in (0, 30]')
        self.runtime.set_fault(fault, float(delay))
        return _json_reply({"state": raw})


class DaprHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, runtime: SidecarRuntime) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.runtime = runtime
        self.origins = OriginPolicy.parse(runtime.config.allowed_origins)
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])
