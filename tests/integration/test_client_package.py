"""The browser client as an npm package: manifest, declarations, what `npm pack` ships.

- its version is the project's;
- the TypeScript declarations compile with a strict-mode example that uses every public
  surface, and the `@ts-expect-error` lines in it prove that a misspelt option or a wrong
  event name does not compile (a loosened declaration fails the build);
- the declarations and the module export the same values (types-test/check-exports.mjs);
- the tarball holds the module, the declarations, the README and package.json only.

The example also runs against the live service: clients/js/test/types-example.test.mjs,
run by test_client_js.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "js"
REQUIRED = os.environ.get("REALTIME_SYNC_REQUIRE_E2E") == "1"  # set by `make test`


def manifest() -> dict[str, Any]:
    value = json.loads((CLIENT_DIR / "package.json").read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None or not (CLIENT_DIR / "node_modules" / "typescript").is_dir():
        if REQUIRED:
            pytest.fail(f"{name} and clients/js/node_modules are required (make test runs npm ci)")
        pytest.skip(f"{name} or clients/js/node_modules missing (make test installs them)")
    return found


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def tsc(project: Path) -> subprocess.CompletedProcess[str]:
    node = _tool("node")
    compiler = CLIENT_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    return run([node, str(compiler), "-p", "types-test", "--pretty", "false"], project)


def package_copy(tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    """The package's sources in a temporary folder (sharing node_modules), then edited."""
    copy = tmp_path / "package"
    copy.mkdir()
    for name in ("package.json", "realtime-sync.js", "realtime-sync.d.ts"):
        shutil.copy(CLIENT_DIR / name, copy / name)
    shutil.copytree(CLIENT_DIR / "types-test", copy / "types-test")
    (copy / "node_modules").symlink_to(CLIENT_DIR / "node_modules", target_is_directory=True)
    edit(copy)
    return copy


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_the_package_version_is_the_projects() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = pyproject["project"]["version"]
    assert manifest()["version"] == version
    lock = json.loads((CLIENT_DIR / "package-lock.json").read_text(encoding="utf-8"))
    assert lock["version"] == version
    assert lock["packages"][""]["version"] == version


def test_the_package_is_publishable_and_exports_its_types() -> None:
    pkg = manifest()
    assert "private" not in pkg
    assert pkg["type"] == "module"
    entry = pkg["exports"]["."]
    # TypeScript reads the first matching condition: `types` must come before `default`.
    assert list(entry) == ["types", "default"]
    assert entry["types"] == pkg["types"] == "./realtime-sync.d.ts"
    assert entry["default"] == pkg["main"] == "./realtime-sync.js"
    for path in (entry["types"], entry["default"]):
        assert (CLIENT_DIR / path).is_file(), path
    assert "typescript" in pkg["devDependencies"]
    assert not pkg.get("dependencies"), "the client is dependency-free"


def test_the_strict_example_compiles_against_the_declarations() -> None:
    result = tsc(CLIENT_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


LOOSENED = {
    "an options interface with an index signature": (
        "export interface RealtimeSyncClientOptions {\n",
        "export interface RealtimeSyncClientOptions {\n  [option: string]: unknown;\n",
    ),
    "addEventListener with a string fallback": (
        "  removeEventListener<K extends RealtimeSyncEventName>(",
        "  addEventListener(type: string, listener: EventListener | null): void;\n"
        "  removeEventListener<K extends RealtimeSyncEventName>(",
    ),
    "frames with writable fields": ("  readonly event_id: string;", "  event_id: string;"),
}


@pytest.mark.parametrize("change", LOOSENED, ids=list(LOOSENED))
def test_a_loosened_declaration_fails_the_compile(tmp_path: Path, change: str) -> None:
    old, new = LOOSENED[change]
    copy = package_copy(tmp_path, lambda d: replace_in(d / "realtime-sync.d.ts", old, new))
    result = tsc(copy)
    assert result.returncode != 0
    # The mistake the loosened declaration let through: its @ts-expect-error is now unused.
    assert "TS2578" in result.stdout, result.stdout + result.stderr


def check_exports(package: Path) -> subprocess.CompletedProcess[str]:
    node = _tool("node")
    return run([node, str(CLIENT_DIR / "types-test" / "check-exports.mjs"), str(package)], ROOT)


def test_the_declarations_and_the_module_export_the_same_values() -> None:
    result = check_exports(CLIENT_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("RealtimeSyncClient", "TokenRefusedError", "backoffDelay", "refreshDelayMs"):
        assert name in result.stdout


MISMATCHES = {
    "an export that is not declared": (
        "realtime-sync.js",
        "export const THROTTLE_CLOSE_CODES",
        "export const CLOSE_CODE_NAMES = {};\nexport const THROTTLE_CLOSE_CODES",
        "CLOSE_CODE_NAMES",
    ),
    "a declared value the module lacks": (
        "realtime-sync.js",
        "export function refreshDelayMs(",
        "function refreshDelayMs(",
        "refreshDelayMs",
    ),
}


@pytest.mark.parametrize("change", MISMATCHES, ids=list(MISMATCHES))
def test_the_export_check_catches(tmp_path: Path, change: str) -> None:
    file, old, new, name = MISMATCHES[change]
    copy = package_copy(tmp_path, lambda d: replace_in(d / file, old, new))
    result = check_exports(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "declarations and module disagree" in result.stderr
    assert name in result.stderr


def test_npm_pack_ships_the_module_the_declarations_and_the_readme_only() -> None:
    npm = _tool("npm")
    result = run([npm, "pack", "--dry-run", "--json", "--loglevel=error"], CLIENT_DIR)
    assert result.returncode == 0, result.stderr
    [tarball] = json.loads(result.stdout)
    assert tarball["name"] == "realtime-sync-client"
    assert tarball["version"] == manifest()["version"]
    assert {f["path"] for f in tarball["files"]} == {
        "package.json",
        "README.md",
        "realtime-sync.js",
        "realtime-sync.d.ts",
    }
