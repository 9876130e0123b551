"""Static files served on the WebSocket port when the live task board is enabled (BOARD).

The board lives in `realtime_sync/board/` (index.html at `/`, its assets beside it) and
the browser client in `clients/js/` is served at `/client/`. Files are read once at start
and held in memory; nothing outside those folders is reachable.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

BOARD_DIR = Path(__file__).resolve().parent / "board"
CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


class StaticFiles:
    """An immutable map of URL path → (bytes, content type)."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        self._files = files

    def get(self, path: str) -> tuple[bytes, str] | None:
        return self._files.get(path)

    def __len__(self) -> int:
        return len(self._files)


def _collect(root: Path, prefix: str) -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    if not root.is_dir():
        return files
    for item in sorted(root.rglob("*")):
        if not item.is_file() or any(part.startswith(".") for part in item.parts):
            continue
        if "node_modules" in item.parts or "test" in item.relative_to(root).parts[:1]:
            continue
        kind = TYPES.get(item.suffix) or mimetypes.guess_type(item.name)[0]
        if kind is None:
            continue
        files[prefix + item.relative_to(root).as_posix()] = (item.read_bytes(), kind)
    return files


def load_board() -> StaticFiles:
    files = _collect(BOARD_DIR, "/")
    files.update(_collect(CLIENT_DIR, "/client/"))
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return StaticFiles(files)
