"""``pixellm train``: help, one-line errors, and a short run from a YAML file."""

from __future__ import annotations

import subprocess
import sys

from pixellm.cli import main


def test_help_lists_train_and_demo():
    out = subprocess.run([sys.executable, "-m", "pixellm", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "train" in out.stdout and "demo" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pixellm", "train", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "--resume" in out.stdout and "key=value" in out.stdout


def test_bad_invocations_give_one_line_errors(tmp_path, capsys):
    assert main(["train"]) == 1
    assert capsys.readouterr().err.strip() == "pixellm train: error: --config FILE.yaml is required (see configs/)"
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 1
    assert "none.yaml: config file not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 2\n")
    assert main(["train", "--config", str(cfg), "optim.lrr=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key optim.lrr" in err[0]
    assert main(["train", "--config", str(cfg)]) == 1
    assert "no training data set configured" in capsys.readouterr().err
    assert main(["train", "--merge-lora", str(tmp_path)]) == 1
    assert "--merge-lora needs --out" in capsys.readouterr().err


def test_short_run_from_yaml(tmp_path, capsys):
    from pixellm.data.synth import write_synth

    write_synth(tmp_path / "data", {"train": 8}, seed=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "preset: tiny\ntrainable: all_but_vision\nlora: {enabled: false}\n"
        f"data: [{{name: s, kind: synth, path: {tmp_path / 'data' / 'train.json'}}}]\n"
        "steps: 1\nbatch_size: 2\neffective_batch: 2\nmax_length: 160\nprogress: false\n"
    )
    code = main(["train", "--config", str(cfg), f"output_dir={tmp_path / 'run'}", "tensorboard=true"])
    assert code == 0
    assert "trained 1 steps" in capsys.readouterr().out
    assert (tmp_path / "run" / "final" / "processor_config.json").is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
