"""The module graph of keysetd has no cycle: every import, lazy ones inside functions too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "keysetd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def _imports(path: Path, modules: set[str]) -> Iterator[str]:
    """keysetd modules ``path`` imports (``from keysetd.x import y`` counts y if a module)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                yield node.module
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in modules)


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: set(_imports(path, modules)) - {name} for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_keysetd() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_lazy_imports() -> None:
    graph = _graph()
    assert "keysetd.strict" in graph["keysetd.cli.configured"]  # imported inside config_from
    assert "keysetd.config" not in graph["keysetd.strict"] or "keysetd.strict" not in graph.get(
        "keysetd.config", set()
    )


def test_the_verifier_and_the_offline_commands_never_import_pydantic(tmp_path: Path) -> None:
    """pydantic (~7 MB, ~50 ms) is for config loading: a service embedding the Verifier and
    ``keysetd verify``/``validate``/``keygen`` do not pay for it."""
    import json
    import subprocess
    import sys

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": []}))
    code = (
        "import sys\n"
        "import keysetd.verifier\n"
        "from keysetd.cli import main\n"
        f"main(['verify', '--jwks', {str(jwks)!r}, 'x.y.z'])\n"
        f"main(['validate', {str(jwks)!r}])\n"
        "main(['keygen', '--alg', 'ES256'])\n"
        "heavy = ('pydantic', 'pydantic_core', 'pydantic_settings')\n"
        "config = ('keysetd.tables', 'keysetd.config', 'keysetd.extension')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in config))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
