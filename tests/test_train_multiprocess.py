"""Two CPU processes (gloo, torchrun): replicas stay identical and the run exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    from pixellm.train.config import config_from_dict
    from pixellm.train.trainer import train

    values = json.loads(sys.argv[1])
    result = train(config_from_dict(values))
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(__import__("os").environ["RANK"])
    digest = hashlib.sha256()
    for name, p in sorted(result.model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().float().numpy().tobytes())
    with open(f"{values['output_dir']}/rank{rank}.json", "w") as f:
        json.dump({"digest": digest.hexdigest(), "step": result.step, "samples": result.samples,
                   "first_loss": result.history[0]["loss"]}, f)
    """
)


def test_two_processes_stay_in_sync_and_exit_cleanly(tmp_path):
    from pixellm.data.synth import write_synth
    from pixellm.model.configuration_pixellm import PixelLMConfig

    write_synth(tmp_path / "data", {"train": 16}, seed=1)
    vocab = PixelLMConfig.from_preset("tiny").text_config.vocab_size
    values = {
        "preset": "tiny",
        "model_overrides": {
            "vision_config": dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=64,
                                  projection_dim=32),
            "text_config": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab),
            "vision_select_layers": [-1, -2], "decoder_dim": 32, "decoder_heads": 4, "decoder_mlp_dim": 64,
            "pixel_detail_channels": 8,
        },
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1},
        "data": [{"name": "synth", "kind": "synth", "path": str(tmp_path / "data" / "train.json")}],
        "steps": 3, "batch_size": 1, "effective_batch": 4, "save_every": 2, "val_every": 100, "log_every": 1,
        "output_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False, "max_length": 160,
    }
    script = tmp_path / "run_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Own session: on a timeout the whole group (torchrun + workers) is killed, no orphans.
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(values)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    # 2 processes x batch 1 x accumulation 2 = 4 samples per step.
    assert ranks[0]["samples"] == 12
    # The processes saw different data (their first losses differ before the all-reduce).
    assert ranks[0]["first_loss"] != ranks[1]["first_loss"]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoint-00000003" / "rng-1.json").is_file()
    assert "Traceback" not in stderr
