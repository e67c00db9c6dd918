"""Tests that otad's modules keep ARCHITECTURE.md's layers: no import runs back up, and services know no HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial import unittest

PACKAGE = Path(__file__).parent.parent / "otad"

# ARCHITECTURE.md's table, module by module (resources/* are layer 5).
LAYERS = {
    **dict.fromkeys(("tap", "admin", "site", "workers", "worker"), 6),
    **dict.fromkeys(("web", "channel", "forwarded"), 5),
    **dict.fromkeys(
        (
            "enrollment",
            "scep_responder",
            "issued",
            "renewal",
            "ca_sharing",
            "users",
            "directory",
            "logins",
            "revocation",
            "ocsp",
            "backup",
            "health",
        ),
        4,
    ),
    **dict.fromkeys(
        (
            "ca",
            "cms",
            "scep",
            "payloads",
            "templates",
            "device_trust",
            "device_attributes",
            "tls",
            "config",
            "store",
            "store.state",
            "store.records",
            "store.schema",
            "store.sqlite",
            "store.postgresql",
            "store.thread",
            "store.migrate",
            "crl",
        ),
        3,
    ),
    **dict.fromkeys(("certificate_rules", "listeners"), 2),
    **dict.fromkeys(("errors", "files", "pool", "tokens", "udid", "systemd", "metrics", "jsonlog"), 1),
}


def _module_name(path: Path) -> str:
    """A module's dotted name under otad; a package's ``__init__`` is the package itself (``store``)."""
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = relative.parts
    if len(parts) > 1 and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int | None:
    """A module's layer; ``otad`` itself (``__init__``, ``__version__``) is below them all."""
    if module in ("__init__", "__version__"):
        return 0
    if module.startswith("resources"):
        return 5
    return LAYERS.get(module)


def _imports(path: Path) -> set[str]:
    """The otad modules (relative names) and third-party top-level packages that ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "otad":
                found.update(f"otad.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


class ArchitectureTests(unittest.TestCase):
    def test_every_module_has_a_layer(self) -> None:
        """Every module under otad/ is placed in a layer of ARCHITECTURE.md's table."""
        for path in PACKAGE.rglob("*.py"):
            self.assertIsNotNone(_layer(_module_name(path)), f"{path.name} is in no layer: add it to ARCHITECTURE.md")

    def test_no_import_runs_up(self) -> None:
        """No module imports from a layer above its own."""
        for path in PACKAGE.rglob("*.py"):
            module = _module_name(path)
            own = _layer(module)
            assert own is not None
            for imported in _imports(path):
                if not imported.startswith("otad."):
                    continue
                target = imported.removeprefix("otad.")
                target_layer = _layer(target)
                self.assertIsNotNone(target_layer, f"{module} imports {imported}, which is in no layer")
                assert target_layer is not None
                self.assertLessEqual(target_layer, own, f"{module} (layer {own}) imports {imported} (layer {target_layer})")

    def test_services_and_below_know_no_http(self) -> None:
        """Nothing below the HTTP layer imports twisted.web or otad.web: status codes live at the edge."""
        for path in PACKAGE.rglob("*.py"):
            module = _module_name(path)
            layer = _layer(module)
            assert layer is not None
            if layer >= 5:
                continue
            for imported in _imports(path):
                self.assertFalse(imported.startswith(("twisted.web", "otad.web")), f"{module} imports {imported}")
