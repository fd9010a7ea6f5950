"""Plugins never import each other nor look each other up by name: what one offers others is a typed
service (edge/services/). Every module under plugins/<p>/ is parsed, every import read wherever it is
(inside functions and `if TYPE_CHECKING:` blocks too), and every `.plugin(` call refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def packages() -> list[Path]:
    return sorted(p for p in PLUGINS.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def imported(node: ast.AST, *, module: str) -> list[str]:
    """The dotted names an import statement brings in, relative imports resolved against `module`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")[: -node.level]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        return [f"{target}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
        return [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if isinstance(node, ast.Call) and _called(node) == "import_module":
        return [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return []


def _called(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def crossings(package: Path) -> list[str]:
    """Each import of another plugin and each `.plugin(` call in the package, as `file:line: what`."""
    own = f"plugins.{package.name}"
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent.parent)
        module = ".".join(relative.with_suffix("").parts)
        if path.name == "__init__.py":
            module += ".__init__"  # so that `from . import x` resolves to the package itself
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in imported(node, module=module):
                if (name == "plugins" or name.startswith("plugins.")) and not (
                    name == own or name.startswith(own + ".")
                ):
                    found.append(f"{relative}:{getattr(node, 'lineno', 0)}: imports {name}")
            if isinstance(node, ast.Call) and _called(node) == "plugin":
                found.append(f"{relative}:{node.lineno}: calls .plugin(...)")
    return found


@pytest.mark.parametrize("package", packages(), ids=lambda p: p.name)
def test_a_plugin_imports_no_other_plugin_and_looks_none_up(package: Path) -> None:
    assert crossings(package) == []


def test_the_check_finds_every_kind_of_crossing(tmp_path: Path) -> None:
    """The check itself: each way of reaching another plugin is caught, and a plugin's own imports are not."""
    root = tmp_path / "plugins"
    package = root / "tiers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from plugins.tiers import rules\nfrom . import rules as again\n")
    (package / "rules.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from plugins.auth_keys import Plugin\n"
        "def f(gateway):\n"
        "    import plugins.credits.ledger\n"
        "    from plugins import failover\n"
        "    from .. import ratelimit\n"
        "    importlib.import_module('plugins.credits')\n"
        "    return gateway.plugin('auth_keys')\n"
    )
    assert crossings(package) == [
        "plugins/tiers/rules.py:4: imports plugins.auth_keys.Plugin",
        "plugins/tiers/rules.py:6: imports plugins.credits.ledger",
        "plugins/tiers/rules.py:7: imports plugins.failover",
        "plugins/tiers/rules.py:8: imports plugins.ratelimit",
        "plugins/tiers/rules.py:9: imports plugins.credits",
        "plugins/tiers/rules.py:10: calls .plugin(...)",
    ]
