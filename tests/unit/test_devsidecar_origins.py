"""Which browser-sent requests the dev sidecar serves (its origin policy, without HTTP)."""

from __future__ import annotations

from realtime_sync.devsidecar.origins import OriginPolicy

NONE = OriginPolicy.parse([])
ALLOWS_APP = OriginPolicy.parse(["http://localhost:5173/"])


def test_a_program_without_browser_headers_is_served() -> None:
    assert NONE.refusal(None, None) is None


def test_the_user_typing_the_address_is_served() -> None:
    assert NONE.refusal(None, "none") is None


def test_any_page_origin_is_refused_by_default() -> None:
    reason = NONE.refusal("http://evil.example", "cross-site")
    assert reason is not None and "http://evil.example" in reason
    assert NONE.refusal("null", None) is not None


def test_a_page_started_request_without_origin_is_refused() -> None:
    """A cross-site <img> GET, or a same-origin one after DNS rebinding, has no Origin."""
    for site in ("cross-site", "same-site", "same-origin"):
        assert NONE.refusal(None, site) is not None


def test_an_allowed_origin_is_served_with_cors_headers() -> None:
    assert ALLOWS_APP.refusal("http://LOCALHOST:5173", "cross-site") is None
    assert ALLOWS_APP.cors_headers("http://localhost:5173") == {
        "Access-Control-Allow-Origin": "http://localhost:5173",
        "Vary": "Origin",
    }
    assert ALLOWS_APP.refusal("http://localhost:5174", "same-site") is not None
    assert ALLOWS_APP.cors_headers("http://localhost:5174") == {}


def test_star_allows_every_origin() -> None:
    assert OriginPolicy.parse(["*"]).refusal("http://anything.example", "cross-site") is None
