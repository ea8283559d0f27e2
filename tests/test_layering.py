"""The layers of the project: the core (``pyro_vae/*.py``) below the stock parts (``models/`` and
``guides/``, imported as ``pyro_vae.models`` and ``pyro_vae.guides``), and the applications built
from stock parts above both (the command line and the novelty detector).

Read from the source with :mod:`ast`, so that every import counts, a lazy one inside a function
as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyro_vae"
STOCK = ("pyro_vae.models", "pyro_vae.guides", "models", "guides")
APPLICATIONS = ("pyro_vae.cli", "pyro_vae.novelty", "pyro_vae.pyod_detector", "pyro_vae.__main__")
# The modules of pyro_vae/ outside the core: the detector, and the entry point of ``python -m pyro_vae``.
APPLICATION_MODULES = ("novelty.py", "pyod_detector.py", "__main__.py")


def _module_name(path: Path) -> str:
    """``pyro_vae.x`` for ``pyro_vae/x.py``; ``pyro_vae.models.vae`` for ``models/vae.py``."""
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] in ("models", "guides"):
        parts.insert(0, "pyro_vae")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules an import statement may load, relative imports resolved: for ``from a import
    b`` both ``a`` and ``a.b`` (``b`` may be a submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, whether the import is inside a function) for every import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module, is_package = _module_name(path), path.name == "__init__.py"
    lazy = {
        id(inner)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(function)
    }
    return [
        (node.lineno, name, id(node) in lazy)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in _imported(node, module, is_package)
    ]


def _is_within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _core() -> list[Path]:
    return sorted(path for path in PACKAGE.glob("*.py") if path.name not in APPLICATION_MODULES)


def _stock() -> list[Path]:
    return sorted([*(ROOT / "models").rglob("*.py"), *(ROOT / "guides").rglob("*.py")])


def _offences(path: Path, forbidden: tuple[str, ...], lazy_allowed: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for line, name, lazy in _imports(path)
        if _is_within(name, forbidden) and not (lazy and _is_within(name, lazy_allowed))
    ]


def test_the_layers_are_where_this_test_looks():
    assert len(_core()) > 10 and len(_stock()) >= 5
    assert (PACKAGE / "cli" / "__init__.py").is_file() and (PACKAGE / "novelty.py").is_file()
    # Relative imports and ``from pyro_vae import models`` are seen as what they load.
    assert _imported(ast.parse("from . import models").body[0], "pyro_vae.x", False) == [
        "pyro_vae",
        "pyro_vae.models",
    ]
    assert "pyro_vae.guides.amortized" in _imported(
        ast.parse("from .amortized import A").body[0], "pyro_vae.guides", True
    )


@pytest.mark.parametrize("path", _core(), ids=lambda path: path.name)
def test_the_core_imports_no_stock_part_and_no_application(path):
    """Only ``pyro_vae/__init__.py`` names an application, in ``__getattr__``: ``from pyro_vae
    import NoveltyDetector`` keeps working without ``import pyro_vae`` loading the stock models."""
    lazy_allowed = ("pyro_vae.novelty",) if path.name == "__init__.py" else ()
    assert _offences(path, STOCK + APPLICATIONS, lazy_allowed) == []


@pytest.mark.parametrize("path", _stock(), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_stock_parts_import_no_application(path):
    assert _offences(path, APPLICATIONS) == []


def test_importing_the_core_loads_no_stock_part_and_the_detector_on_demand():
    script = (
        "import sys, pyro_vae\n"
        "loaded = sorted(name for name in sys.modules if name.startswith(('pyro_vae.models', 'pyro_vae.guides',"
        " 'pyro_vae.novelty', 'pyro_vae.cli')))\n"
        "assert not loaded, loaded\n"
        "from pyro_vae import NoveltyDetector\n"
        "import pyro_vae.novelty\n"
        "assert NoveltyDetector is pyro_vae.novelty.NoveltyDetector is pyro_vae.NoveltyDetector\n"
        "assert 'NoveltyDetector' in pyro_vae.__all__\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
