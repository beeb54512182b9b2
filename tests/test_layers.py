"""The package's layers, checked on the source: only engine/ talks to Ray; config.py knows no
workloads and data/ no engine (no import circle); a bare ``import hepray.config`` loads neither."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hepray"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, function-level ones included."""
    mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    pkg = mod.rsplit(".", 1)[0] if path.name != "__init__.py" else mod.removesuffix(".__init__")
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names]  # `from . import executor`
    return out


def _offenders(files, bad) -> list[str]:
    return [f"{p.relative_to(PKG.parent)}:{line}: {name}" for p in files for line, name in _imports(p) if bad(name)]


def test_only_the_engine_imports_ray():
    files = [p for p in PKG.rglob("*.py") if "engine" not in p.relative_to(PKG).parts]
    assert _offenders(files, lambda n: n == "ray" or n.startswith("ray.")) == []


def test_no_import_circle_config_and_data():
    assert _offenders([PKG / "config.py"], lambda n: n.startswith(("hepray.workloads", "hepray.engine"))) == []
    assert _offenders(sorted((PKG / "data").glob("*.py")),
                      lambda n: n.startswith(("hepray.engine", "hepray.workloads"))) == []


def test_importing_config_loads_no_workload_engine_or_ray():
    # hepray/__init__ imports everything on purpose (hepray.run, hepray.REGISTRY): an empty
    # stand-in package lets config.py and data/ show what they import themselves
    code = ("import sys, json, types; pkg = types.ModuleType('hepray'); pkg.__path__ = [%r]; sys.modules['hepray'] = pkg; "
            "import hepray.config, hepray.data.planning, hepray.data.loading, hepray.data.mapper; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('hepray.workloads', 'hepray.engine', 'ray')))))"
            % str(PKG))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PKG.parent)
    assert json.loads(out.stdout) == []
