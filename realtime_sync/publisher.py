"""Publishing task events through Dapr's HTTP publish API (`realtime-sync publish`, `demo`).

`POST {sidecar}/v1.0/publish/{pubsub}/{topic}` with a JSON body: the same call works against
a real daprd and the dev sidecar (`DAPR_HTTP_ENDPOINT`, or `DAPR_RUNTIME_HOST` +
`DAPR_HTTP_PORT`; `DAPR_API_TOKEN` is sent as `dapr-api-token`).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson


def sidecar_base_url(port: int | None = None) -> str:
    """The sidecar's HTTP API: an explicit port wins over `DAPR_HTTP_ENDPOINT`."""
    endpoint = os.environ.get("DAPR_HTTP_ENDPOINT")
    if endpoint and port is None:
        return endpoint.rstrip("/")
    host = os.environ.get("DAPR_RUNTIME_HOST", "127.0.0.1")
    return f"http://{host}:{port or int(os.environ.get('DAPR_HTTP_PORT', '3500'))}"


@dataclass
class Publisher:
    """Dapr's HTTP publish API on the local sidecar."""

    base_url: str
    pubsub: str = "pubsub"
    topic: str = "task-updates"
    api_token: str | None = None
    timeout_s: float = 5.0

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1.0/publish/{self.pubsub}/{self.topic}"

    def publish(self, event: dict[str, Any]) -> int:
        """Publish one event; returns the HTTP status. Raises urllib.error.HTTPError when
        the sidecar refuses it, URLError/OSError when it cannot be reached."""
        headers = {"Content-Type": "application/json"}
        if self.api_token:
            headers["dapr-api-token"] = self.api_token
        request = urllib.request.Request(  # noqa: S310 - the local Dapr sidecar
            self.url, data=orjson.dumps(event), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
            status: int = resp.status
            if status >= 300:
                raise urllib.error.HTTPError(
                    self.url, status, "publish refused", resp.headers, None
                )
            return status
