"""Which browser-originated requests the dev sidecar's HTTP API serves.

Any web page can make the browser send a "simple" request to the sidecar (a ``POST`` with
``Content-Type: text/plain``, a ``GET`` from an ``<img>``) with no CORS preflight: the page
cannot read the answer, but the request is served, so a page could publish events or
invoke the app. daprd serves them too (without ``--allowed-origins`` it does no CORS
handling at all); the dev sidecar runs on a developer's laptop, beside their browser, so it
refuses every request a browser sent for a page whose origin it was not told to allow.

Browsers say who started a request: ``Origin`` (on every ``POST`` and every CORS request)
and ``Sec-Fetch-Site`` (on every request, ``none`` when the user typed the address). A
request without either comes from a program (curl, a Dapr SDK), which is served.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ANY_ORIGIN = "*"
# Sec-Fetch-Site values a browser sends when no other page started the request.
_USER_STARTED = frozenset({"none"})
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """The browser origins allowed to call the sidecar (``*``: any), as daprd's
    ``--allowed-origins``; empty (the default) refuses every page."""

    allowed: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, origins: Iterable[str]) -> OriginPolicy:
        return cls(frozenset(o.strip().rstrip("/").lower() for o in origins if o.strip()))

    def allows_origin(self, origin: str) -> bool:
        return ANY_ORIGIN in self.allowed or origin.strip().lower() in self.allowed

    def refusal(self, origin: str | None, fetch_site: str | None) -> str | None:
        """Why a request with these headers is refused, or None to serve it."""
        if origin is not None:
            if self.allows_origin(origin):
                return None
            return (
                f"requests from the browser origin {origin!r} are refused "
                "(allow it with --allowed-origins)"
            )
        if fetch_site is not None and fetch_site.strip().lower() not in _USER_STARTED:
            # No Origin but started by a page (a cross-site <img>, or a same-origin
            # request after DNS rebinding): nothing tells which page, so refuse.
            return f"browser requests started by a page (Sec-Fetch-Site: {fetch_site}) are refused"
        return None

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        """The CORS answer headers for an allowed origin (none for a program)."""
        if origin is None or not self.allows_origin(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
