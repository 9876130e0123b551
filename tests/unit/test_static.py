"""The board's static files: the board, and under /client/ the client module only."""

from __future__ import annotations

from pathlib import Path

import pytest

from realtime_sync import static
from realtime_sync.static import BoardUnavailable, load_board

ROOT = Path(__file__).resolve().parents[2]


def test_the_board_and_the_client_module_are_served_and_nothing_else_of_the_client() -> None:
    files = load_board()
    assert files.get("/") == files.get("/index.html") is not None
    assert files.get("/board.js") is not None
    module = (ROOT / "clients" / "js" / "realtime-sync.js").read_bytes()
    assert files.get("/client/realtime-sync.js") == (module, "text/javascript; charset=utf-8")
    for other in ("package.json", "package-lock.json", "test/client.test.mjs"):
        assert files.get(f"/client/{other}") is None


def test_a_missing_client_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(static, "CLIENT_LOCATIONS", (tmp_path / "realtime-sync.js",))
    with pytest.raises(
        BoardUnavailable, match=r"browser client realtime-sync\.js is not installed"
    ):
        load_board()
