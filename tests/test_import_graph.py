"""Import graph (docs/architecture.md): ``pixellm.model`` imports no stage above it, not even
inside a function. Parsed with ``ast``, so lazy, conditional and ``TYPE_CHECKING`` imports count."""

from __future__ import annotations

import ast
from pathlib import Path

import pixellm

FORBIDDEN = ("processing", "data", "train", "infer", "eval", "serve", "cli", "tools", "build", "testing")
PACKAGE = Path(pixellm.__file__).resolve().parent


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the file, at any depth; for
    ``from X import a`` both ``X`` and ``X.a`` (``a`` may be a submodule)."""
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


def is_forbidden(module: str) -> bool:
    lazy = pixellm._LAZY.get(module.removeprefix("pixellm."))  # from pixellm import PixelLMProcessor
    parts = (lazy or module).split(".")
    return len(parts) >= 2 and parts[0] == "pixellm" and parts[1] in FORBIDDEN


def test_model_imports_no_stage_above_it():
    files = sorted((PACKAGE / "model").rglob("*.py"))
    assert len(files) > 5
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path, "pixellm.model")
        if is_forbidden(module)
    ]
    assert not bad, "\n".join(bad)


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
    found = {m for _, m in imported_modules(source, "pixellm.model") if is_forbidden(m)}
    assert found == {
        "pixellm.processing.tokenizer", "pixellm.processing.tokenizer.build_tiny_tokenizer",
        "pixellm.data", "pixellm.data.collate", "pixellm.infer", "pixellm.PixelLMProcessor", "pixellm.eval.matching",
        "pixellm.train.setup",
    }
