"""Static files served on the WebSocket port when the live task board is enabled (BOARD).

The board lives in `realtime_sync/board/` (index.html at `/`, its assets beside it) and
imports the browser client from `/client/realtime-sync.js`, the only file served under
`/client/`. The client's one source is `clients/js/realtime-sync.js` (also an npm
package): the wheel carries a copy at `board/client/` (pyproject.toml, `force-include`),
a source checkout serves the original. Files are read once at start and held in memory;
nothing else is reachable.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BOARD_DIR = PACKAGE_DIR / "board"
CLIENT_MODULE = "realtime-sync.js"
CLIENT_URL = "/client/" + CLIENT_MODULE
# Where the client module is found: inside an installed wheel, then in a source checkout.
CLIENT_LOCATIONS = (
    BOARD_DIR / "client" / CLIENT_MODULE,
    PACKAGE_DIR.parent / "clients" / "js" / CLIENT_MODULE,
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


# Sent with every static file: the board runs only its own scripts and styles, talks only
# to its own origin, and cannot be framed (no clickjacking) or sniffed as another type.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


class BoardUnavailable(Exception):
    """BOARD is on but a file the board needs is not installed."""


class StaticFiles:
    """An immutable map of URL path → (bytes, content type)."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        self._files = files

    def get(self, path: str) -> tuple[bytes, str] | None:
        return self._files.get(path)

    def __len__(self) -> int:
        return len(self._files)


def _content_type(item: Path) -> str | None:
    return TYPES.get(item.suffix) or mimetypes.guess_type(item.name)[0]


def _collect_board() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for item in sorted(BOARD_DIR.glob("*")):
        kind = _content_type(item)
        if item.is_file() and not item.name.startswith(".") and kind is not None:
            files["/" + item.name] = (item.read_bytes(), kind)
    return files


def load_board() -> StaticFiles:
    """The board's files and the client module; BoardUnavailable names what is missing."""
    files = _collect_board()
    if "/index.html" not in files:
        raise BoardUnavailable(f"BOARD is on but {BOARD_DIR / 'index.html'} is missing")
    files["/"] = files["/index.html"]
    client = next((path for path in CLIENT_LOCATIONS if path.is_file()), None)
    if client is None:
        raise BoardUnavailable(
            f"BOARD is on but the browser client {CLIENT_MODULE} is not installed "
            f"(looked in {', '.join(str(p.parent) for p in CLIENT_LOCATIONS)})"
        )
    files[CLIENT_URL] = (client.read_bytes(), TYPES[".js"])
    return StaticFiles(files)
