"""README's "Layout" names every module of the package, so a newcomer finds each one's role."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "realtime_sync"


def layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Layout")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def test_the_layout_names_every_module() -> None:
    section = layout_section()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.startswith("__"):
            continue
        relative = path.relative_to(PACKAGE)
        # Top-level modules by name, the core by core/<name>, the dev sidecar's by name.
        named = f"`{relative.as_posix()}`" if relative.parts[0] == "core" else f"`{path.name}`"
        if named not in section:
            missing.append(relative.as_posix())
    assert missing == [], f"README Layout does not name: {missing}"
