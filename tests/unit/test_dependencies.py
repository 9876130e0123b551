"""Every third-party module the package imports comes from a distribution that
pyproject.toml declares itself: one brought in by another dependency may go away in its
next release."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "realtime_sync"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """The distributions named in [project].dependencies (extras excluded)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = (re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req) for req in project["dependencies"])
    return {normalized(found.group()) for found in names if found}


def imported_modules(source: Path) -> dict[str, set[str]]:
    """Absolute module name -> the package files importing it, outside the standard
    library and the package itself (imports inside functions included)."""
    found: dict[str, set[str]] = {}
    for path in sorted(source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in {PACKAGE, "__future__"}:
                    found.setdefault(name, set()).add(path.relative_to(source.parent).as_posix())
    return found


@cache
def providers(module: str) -> frozenset[str]:
    """The distributions that install `module`; where several share its top-level name
    (the `google` namespace), the one whose files hold it."""
    candidates = packages_distributions().get(module.partition(".")[0], [])
    if len(candidates) <= 1:
        return frozenset(normalized(c) for c in candidates)
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    places = (
        {Path(spec.origin).resolve().parent}
        if spec.origin
        else {Path(p).resolve() for p in spec.submodule_search_locations or ()}
    )
    owners = set()
    for name in candidates:
        dist = distribution(name)
        files = dist.files or []
        if any(Path(str(dist.locate_file(f))).resolve().parent in places for f in files):
            owners.add(normalized(name))
    return frozenset(owners)


def undeclared(source: Path, dependencies: set[str]) -> dict[str, set[str]]:
    """Imported module -> the files importing it, for each not installed by `dependencies`."""
    return {
        module: files
        for module, files in imported_modules(source).items()
        if not providers(module) & dependencies
    }


def test_every_imported_distribution_is_declared() -> None:
    assert undeclared(ROOT / PACKAGE, declared()) == {}


def test_an_import_provided_only_by_a_dependency_of_a_dependency_is_reported(
    tmp_path: Path,
) -> None:
    """The check itself: grpc comes with dapr[grpc], google.rpc with grpcio-status, yet
    each imported module must name its own distribution."""
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "shell.py").write_text(
        "import dapr\nimport grpc\nfrom google.rpc import status_pb2\n"
        "from google.protobuf import any_pb2\nimport os.path\nfrom . import core\n"
        "from realtime_sync.core import wire\n"
    )
    missing = undeclared(package, {"dapr", "protobuf"})
    assert missing == {"grpc": {f"{PACKAGE}/shell.py"}, "google.rpc": {f"{PACKAGE}/shell.py"}}
