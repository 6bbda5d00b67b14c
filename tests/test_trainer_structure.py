"""Static shape of ``Trainer``: every attribute is created in ``__init__``; ``run`` is a short loop."""

from __future__ import annotations

import ast
import inspect

from pixellm.train import trainer


def _methods() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(inspect.getsource(trainer.Trainer))
    cls = tree.body[0]
    return {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}


def _assigned_self_attributes(func: ast.FunctionDef) -> set[str]:
    names = set()
    for node in ast.walk(func):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for target in targets:
            for e in ast.walk(target):
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
                    names.add(e.attr)
    return names


def test_every_trainer_attribute_is_created_in_init():
    methods = _methods()
    in_init = _assigned_self_attributes(methods.pop("__init__"))
    late = {name: attr for name, f in methods.items() for attr in _assigned_self_attributes(f) - in_init}
    assert not late, f"attributes first set outside __init__: {late}"


def test_run_is_a_short_loop_over_step_log_validate_checkpoint():
    run = _methods()["run"]
    assert run.end_lineno - run.lineno < 25
    called = {n.func.attr for n in ast.walk(run) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {"train_step", "log", "validate_and_report", "checkpoint"} <= called
