"""The command-line surface documented in README.md and docs/: every command exists, prints --help, and the
package import stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pixellm.cli import build_parser, main

COMMANDS = ["demo", "vision-pretrain", "train", "predict", "chat", "serve", "infer", "eval", "flops", "convert-released",
            "data", "datagen"]
SUBCOMMANDS = {"eval": ["muse", "refer"], "data": ["refer2muse", "stats", "synth"], "datagen": ["generate", "filter"]}


def test_every_documented_command_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: pixellm" in capsys.readouterr().out


@pytest.mark.parametrize("command, sub", [(c, s) for c, subs in SUBCOMMANDS.items() for s in subs])
def test_subcommand_help_exits_zero(command, sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, sub, "--help"])
    assert exc.value.code == 0


def test_import_is_light_and_module_entry_point_works():
    code = "import sys, pixellm; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    res = subprocess.run([sys.executable, "-m", "pixellm", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "COMMAND" in res.stdout


def test_bad_input_is_one_line_error_without_traceback(tmp_path):
    bad = tmp_path / "gt.json"
    bad.write_text("{not json")
    pred = tmp_path / "pred.jsonl"
    pred.write_text("")
    res = subprocess.run([sys.executable, "-m", "pixellm", "eval", "muse", "--gt", str(bad), "--pred", str(pred)],
                         capture_output=True, text=True)
    assert res.returncode != 0
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "gt.json" in lines[0] and "Traceback" not in res.stderr
