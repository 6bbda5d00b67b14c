"""Import graph (docs/architecture.md, "Import graph"): the stages of ``src/pixellm`` form layers,
and a module imports only its own stage and stages of lower layers, not even inside a function.

Every module of the package is parsed with ``ast``, so lazy, conditional and ``TYPE_CHECKING``
imports count, and so do relative imports and ``importlib.import_module("...")`` with a literal.
A stage is a top-level name under ``src/pixellm`` (``model`` for ``model/*.py``, ``build`` for
``build.py``). On top of the layers, some stages must not reach others even through the stages in
between (``NEVER_REACHES``, checked on the transitive closure).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

import pixellm

PACKAGE = Path(pixellm.__file__).resolve().parent

# Lowest first. A stage may import the stages of lower layers, never one of its own layer (other
# than itself) or above. ``errors`` is the bottom of the base layer: the other base modules import
# it and nothing else of the package.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("conventions", "files", "losses", "chat_client"),
    ("model",),
    ("processing",),
    ("data",),
    ("build",),
    ("train",),
    ("infer", "eval"),
    ("demo", "tools", "serve"),
    ("testing",),
    ("cli",),
    ("__main__",),  # python -m pixellm
)
# Stages that must not reach these, directly or through any module they import (at any depth).
NEVER_REACHES: dict[str, tuple[str, ...]] = {
    # pixellm.build is the only place that joins the model and the tokenizers
    "processing": ("model",),
    # the evaluators read predictions and ground truth; they run no model and no processor
    "eval": ("model", "processing", "infer"),
}
ROOT = "__init__"  # pixellm/__init__.py: above every stage, imports none at module level
STAGES = {s for stages in LAYERS for s in stages}


def layer_of(stage: str) -> int:
    for i, stages in enumerate(LAYERS):
        if stage in stages:
            return i
    raise KeyError(stage)


def module_name(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def package_of(path: Path, package_dir: Path) -> str:
    """The package relative imports in ``path`` resolve against."""
    name = module_name(path, package_dir)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def stage_of(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the file, at any depth; for
    ``from X import a`` both ``X`` and ``X.a`` (``a`` may be a submodule). ``package``: the
    file's package (``pixellm.model`` for ``pixellm/model/vision.py`` and for
    ``pixellm/model/__init__.py``), to resolve relative imports."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            out.append((node.lineno, node.args[0].value))
    return out


def resolve(module: str) -> list[str]:
    """The package modules an imported name stands for: ``pixellm.PixelLMProcessor`` is the lazy
    public name (``pixellm._LAZY``, plus what importing it also imports); anything else itself."""
    name = module.removeprefix("pixellm.")
    if module.startswith("pixellm.") and name in pixellm._LAZY:
        return [pixellm._LAZY[name], *([pixellm._ALSO_IMPORT[name]] if name in pixellm._ALSO_IMPORT else [])]
    return [module]


def target_stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "pixellm" else None


def package_files(package_dir: Path) -> list[Path]:
    return sorted(package_dir.rglob("*.py"))


def shown(path: Path, package_dir: Path) -> str:
    return str(path.relative_to(package_dir.parent.parent))


def layer_violations(package_dir: Path) -> list[str]:
    """One line per import of a stage that is not below the importing module's stage:
    ``src/pixellm/<file>:<line>: <stage> (layer i) imports <module> (<stage>, layer j)``."""
    bad = []
    for path in package_files(package_dir):
        me = stage_of(path, package_dir)
        if me == ROOT:
            continue
        for line, raw in imported_modules(path, package_of(path, package_dir)):
            for module in resolve(raw):
                them = target_stage(module)
                if them is None or them == me:
                    continue
                if them not in STAGES:
                    bad.append(f"{shown(path, package_dir)}:{line}: {me} imports {raw} ({them}: no such stage)")
                elif layer_of(them) >= layer_of(me):
                    where = "above" if layer_of(them) > layer_of(me) else "beside"
                    bad.append(f"{shown(path, package_dir)}:{line}: {me} (layer {layer_of(me)}) imports {raw}"
                               f" ({them}, layer {layer_of(them)}, {where} it)")
    return bad


def module_graph(package_dir: Path) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """Module -> package modules it imports (function-level included; importing a module runs its
    parent packages' ``__init__``, so they count too), and where each edge comes from."""
    files = {module_name(p, package_dir): p for p in package_files(package_dir)}
    edges: dict[str, set[str]] = {m: set() for m in files}
    where: dict[tuple[str, str], str] = {}

    def existing(module: str) -> Iterator[str]:
        parts = module.split(".")
        for i in range(len(parts), 1, -1):  # the longest prefix that is a module or package
            if ".".join(parts[:i]) in files:
                yield from (".".join(parts[:j]) for j in range(2, i + 1))  # with its parent packages
                return

    for name, path in files.items():
        for parent in existing(package_of(path, package_dir)):  # run before the module itself
            if parent != name:
                edges[name].add(parent)
                where.setdefault((name, parent), f"{shown(path, package_dir)} is in package {parent}")
        for line, raw in imported_modules(path, package_of(path, package_dir)):
            for module in resolve(raw):
                for target in existing(module):
                    if target != name:
                        edges[name].add(target)
                        where.setdefault((name, target), f"{shown(path, package_dir)}:{line} imports {target}")
    return edges, where


def reach_violations(package_dir: Path) -> list[str]:
    """One line per module of a ``NEVER_REACHES`` stage that reaches a stage it must not, with the
    chain of imports (file and line of each)."""
    edges, where = module_graph(package_dir)
    bad = []
    for start in sorted(edges):
        me = target_stage(start)
        forbidden = NEVER_REACHES.get(me or "", ())
        if not forbidden:
            continue
        parent: dict[str, str] = {start: ""}
        reported: set[str] = set()  # one chain per forbidden stage
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nxt in sorted(edges.get(node, ())):
                if nxt in parent:
                    continue
                parent[nxt] = node
                if target_stage(nxt) in forbidden:
                    if target_stage(nxt) in reported:
                        continue
                    reported.add(target_stage(nxt))
                    chain, at = [], nxt
                    while parent[at]:
                        chain.append(where[(parent[at], at)])
                        at = parent[at]
                    bad.append(f"{start} ({me}) reaches {target_stage(nxt)}: " + "; ".join(reversed(chain)))
                    continue
                queue.append(nxt)
    return bad


# --------------------------------------------------------------------------- the package itself


def test_every_module_belongs_to_a_layer():
    stages = {stage_of(p, PACKAGE) for p in package_files(PACKAGE)} - {ROOT}
    assert stages == STAGES, (
        f"stages without a layer: {sorted(stages - STAGES)}; layers naming no module: {sorted(STAGES - stages)} "
        "(place a new top-level module in LAYERS and in docs/architecture.md, 'Import graph')"
    )
    assert len(package_files(PACKAGE)) > 60


def test_no_module_imports_its_own_layer_or_above():
    bad = layer_violations(PACKAGE)
    assert not bad, "imports against the layers of docs/architecture.md ('Import graph'):\n" + "\n".join(bad)


def test_stages_never_reach_what_they_must_not():
    bad = reach_violations(PACKAGE)
    assert not bad, "\n".join(bad)


def test_the_package_root_imports_no_stage():
    """``import pixellm`` (run before any submodule) stays light; its public names are lazy."""
    root = PACKAGE / "__init__.py"
    found = [f"{line}: {m}" for line, m in imported_modules(root, "pixellm") if target_stage(m) is not None]
    assert not found, found
    for module in [*pixellm._LAZY.values(), *pixellm._ALSO_IMPORT.values()]:
        assert target_stage(module) in STAGES, module


def test_model_imports_no_stage_above_it():
    """The original rule (now part of the layers), kept as a direct check on ``model/``."""
    files = sorted((PACKAGE / "model").rglob("*.py"))
    assert len(files) > 5
    bad = [
        f"{shown(path, PACKAGE)}:{line} imports {module}"
        for path in files
        for line, raw in imported_modules(path, "pixellm.model")
        for module in resolve(raw)
        if target_stage(module) is not None and layer_of(target_stage(module)) > layer_of("model")
    ]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- the checker


def test_the_check_sees_function_level_relative_and_dynamic_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "import importlib\n"
        "def f():\n"
        "    from pixellm.processing.tokenizer import build_tiny_tokenizer\n"
        "    from ..data import collate\n"
        "    from pixellm import infer, PixelLMProcessor, PixelLMConfig\n"
        "    return importlib.import_module('pixellm.eval.matching')\n"
        "if False:\n"
        "    import pixellm.train.setup\n"
        "from pixellm.model.common import MLP\n"
        "from pixellm.errors import ConfigError\n"
    )
    found = {
        m for _, raw in imported_modules(source, "pixellm.model") for m in resolve(raw)
        if target_stage(m) not in (None, "model", "errors")
    }
    assert found == {
        "pixellm.processing.tokenizer", "pixellm.processing.tokenizer.build_tiny_tokenizer",
        "pixellm.data", "pixellm.data.collate", "pixellm.infer", "pixellm.processing.processing_pixellm",
        "pixellm.eval.matching", "pixellm.train.setup",
    }


def fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "src" / "pixellm"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_violation_names_file_line_and_import(tmp_path):
    root = fake_package(tmp_path, {
        "processing/__init__.py": "",
        "processing/tok.py": "import os\n\n\ndef corpus():\n    from pixellm.data.synth import words\n",
        "processing/load.py": "from . import tok\nfrom ..model import configuration\n",
        "data/__init__.py": "",
        "data/synth.py": "from pixellm.processing.tok import corpus\n",
        "eval/__init__.py": "",
        "eval/infer_peer.py": "from pixellm.infer import predictor\n",
        "eval/ok.py": "from pixellm.data import synth\n",
        "infer/__init__.py": "",
        "infer/predictor.py": "",
        "model/__init__.py": "",
        "model/configuration.py": "",
    })
    bad = layer_violations(root)
    assert bad == [
        "src/pixellm/eval/infer_peer.py:1: eval (layer 7) imports pixellm.infer (infer, layer 7, beside it)",
        "src/pixellm/eval/infer_peer.py:1: eval (layer 7) imports pixellm.infer.predictor (infer, layer 7, beside it)",
        "src/pixellm/processing/tok.py:5: processing (layer 3) imports pixellm.data.synth (data, layer 4, above it)",
        "src/pixellm/processing/tok.py:5: processing (layer 3) imports pixellm.data.synth.words (data, layer 4, above it)",
    ]
    reach = reach_violations(root)
    # eval/ok.py -> data/synth.py -> processing/tok.py: eval reaches processing through data;
    # processing/load.py reaches the model (a relative import, allowed by the layers alone)
    assert "pixellm.eval.ok (eval) reaches processing: src/pixellm/eval/ok.py:1 imports pixellm.data.synth; " \
           "src/pixellm/data/synth.py:1 imports pixellm.processing" in reach
    assert "pixellm.processing.load (processing) reaches model: src/pixellm/processing/load.py:2 imports pixellm.model" in reach
    assert any(r.startswith("pixellm.eval.infer_peer (eval) reaches infer") for r in reach)


@pytest.mark.parametrize("stage", sorted(NEVER_REACHES))
def test_never_reaches_names_known_stages(stage):
    assert stage in STAGES and set(NEVER_REACHES[stage]) <= STAGES
