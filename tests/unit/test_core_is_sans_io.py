"""The core stays sans-I/O: no event loop, sockets, gRPC, Dapr or shell modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import realtime_sync.core

CORE_DIR = Path(realtime_sync.core.__file__).parent
CORE_PACKAGE = "realtime_sync.core"
BANNED_ROOTS = frozenset(
    {
        "asyncio",
        "socket",
        "grpc",
        "websockets",
        "dapr",
        "threading",
        "aiohttp",
        "prometheus_client",
    }
)
CORE_FILES = sorted(CORE_DIR.glob("*.py"))


def imported_modules(source: str, module: str) -> list[str]:
    """Every module a source file imports, relative imports resolved against `module`."""
    package = module.rsplit(".", 1)[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.append(base)
            # `from realtime_sync import hub` imports realtime_sync.hub
            found.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
            in {"__import__", "import_module"}
        ):
            found.append("<dynamic import>")
    return found


def forbidden(name: str) -> bool:
    """An I/O library, a dynamic import, or a realtime_sync module outside the core."""
    root = name.partition(".")[0]
    if name == "<dynamic import>" or root in BANNED_ROOTS:
        return True
    if root != "realtime_sync" or name == "realtime_sync":
        return False
    return name != CORE_PACKAGE and not name.startswith(CORE_PACKAGE + ".")


def violations(source: str, module: str) -> list[str]:
    return [name for name in imported_modules(source, module) if forbidden(name)]


def test_the_core_package_has_its_modules() -> None:
    names = {p.stem for p in CORE_FILES}
    assert {
        "__init__",
        "events",
        "protocol",
        "auth",
        "routing",
        "fanout",
        "dedupe",
        "resume",
        "ratelimit",
        "outbox",
        "outcomes",
        "session",
    } <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_a_core_module_imports_no_io_or_shell_module(path: Path) -> None:
    module = f"{CORE_PACKAGE}.{path.stem}"
    assert violations(path.read_text(encoding="utf-8"), module) == []


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import socket as s",
        "import grpc.aio",
        "from websockets.asyncio.server import serve",
        "from dapr.clients import DaprClient",
        "import threading",
        "from aiohttp import web",
        "import prometheus_client",
        "from realtime_sync import hub",
        "from realtime_sync.state import StateClient",
        "import realtime_sync.server",
        "from .. import config",
        "from ..metrics import EVENTS",
        "def f():\n    import asyncio",
        "try:\n    import grpc\nexcept ImportError:\n    pass",
        "if False:\n    from dapr import clients",
        "mod = __import__('socket')",
        "import importlib\nm = importlib.import_module('asyncio')",
    ],
)
def test_the_checker_flags_a_forbidden_import(source: str) -> None:
    assert violations(source, "realtime_sync.core.events") != []


@pytest.mark.parametrize(
    "source",
    [
        "import orjson",
        "import jwt",
        "from collections import deque",
        "from realtime_sync.core.events import TaskEvent",
        "from .events import TaskEvent",
        "from . import events",
        "import realtime_sync.core.routing",
        "from __future__ import annotations",
    ],
)
def test_the_checker_allows_pure_imports(source: str) -> None:
    assert violations(source, "realtime_sync.core.protocol") == []
