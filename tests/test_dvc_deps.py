"""dvc.yaml lists, for every stage, each source file the stage's code imports (transitively, function-level
imports included): an edit to any of them must make `dvc status` rerun the stage, or its metrics go stale."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(path: Path) -> set[str]:
    """Names of the survlm modules a file imports, anywhere in it."""
    package = ".".join(path.relative_to(SRC).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "survlm"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{anchor}.{node.module}" if node.module else anchor
            elif node.module and node.module.split(".")[0] == "survlm":
                module = node.module
            else:
                continue
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}   # `from . import x`: x may be a module
    return found


def _runs_code(path: Path) -> bool:
    """False for a file of nothing but a docstring and __future__ imports (package __init__ files)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
               and not (isinstance(node, ast.ImportFrom) and node.module == "__future__") for node in body)


def import_closure(module: str) -> set[Path]:
    """Every survlm source file that running `module` can import (package __init__ files included)."""
    todo, files = [module], set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):   # importing a.b.c runs a/__init__, a/b/__init__ too
            path = _module_file(".".join(parts[:i]))
            if path is not None and path not in files:
                files.add(path)
                todo.extend(_imported_modules(path))
    return files


def test_every_stage_lists_the_code_it_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        module = stage["cmd"].split("python -m ", 1)[1].split()[0]
        deps = [REPO / d for d in stage.get("deps", [])]
        needed = {p for p in import_closure(module) if _runs_code(p)}
        if (SRC / "survlm" / "schema.py") in needed:
            needed.add(SRC / "survlm" / "schemas")   # the bundled schema files it reads
        uncovered = sorted(str(p.relative_to(REPO)) for p in needed
                           if not any(p == d or d in p.parents for d in deps))
        if uncovered:
            missing[name] = uncovered
    assert not missing, f"dvc.yaml deps lack what these stages import: {missing}"


def test_import_closure_follows_function_level_and_relative_imports():
    closure = {str(p.relative_to(SRC)) for p in import_closure("survlm.stages.infer")}
    assert "survlm/modeling/extractor.py" in closure      # imported inside main()
    assert "survlm/units.py" in closure                   # two hops away
    assert "survlm/modeling/sft.py" not in closure


def test_layers_modeling_never_imports_stages_and_stages_not_each_other():
    """The core (config, artifacts, predictions, ...) and modeling never import a stage; a stage imports the core,
    modeling and stages.common, never another stage (what two stages share lives below them)."""
    wrong = {}
    for path in sorted((SRC / "survlm").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        stages = {m for m in _imported_modules(path) if m.startswith("survlm.stages.")}
        if module.startswith("survlm.stages."):
            stages = {m for m in stages if not m.startswith("survlm.stages.common")}
        if stages:
            wrong[module] = sorted(stages)
    assert not wrong, wrong


def test_config_and_artifacts_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, survlm.config, survlm.artifacts, survlm.predictions, survlm.stages.common; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
