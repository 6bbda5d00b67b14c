"""Kill-and-resume ends with exactly the weights of an uninterrupted run; crashes mid-save leave
no checkpoint that looks complete."""

from __future__ import annotations

import pytest
import torch

from pixellm.testing import save_checkpoint
from pixellm.train import checkpoint as ckpt
from pixellm.train.config import config_from_dict
from pixellm.train.trainer import train


def small_overrides() -> dict:
    """A model much smaller than ``tiny`` that still uses the tiny tokenizer (same vocabulary)."""
    from pixellm.model.configuration_pixellm import PixelLMConfig

    vocab = PixelLMConfig.from_preset("tiny").text_config.vocab_size
    return {
        "vision_config": dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=64,
                              projection_dim=32),
        "text_config": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2),
        "vision_select_layers": [-1, -2], "llm_image_grid": 4, "decoder_dim": 32, "decoder_heads": 4,
        "decoder_mlp_dim": 64, "pixel_detail_channels": 8,
    }


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from pixellm.data.synth import write_synth

    out = tmp_path_factory.mktemp("synth")
    write_synth(out, {"train": 24, "val": 4}, seed=3)
    return out


def make_cfg(data, out, **kw):
    values = {
        "preset": "tiny", "model_overrides": small_overrides(), "trainable": "pixellm",
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.3},  # dropout: RNG state matters
        "data": [{"name": "synth", "kind": "synth", "path": str(data / "train.json")}],
        "val_data": str(data / "val.json"), "val_samples": 4, "max_length": 160,
        "optim": {"lr": 1e-3, "warmup_steps": 2}, "steps": 6, "batch_size": 2, "effective_batch": 4,
        "save_every": 2, "val_every": 3, "log_every": 1, "output_dir": str(out), "progress": False,
        "tensorboard": False, "seed": 5,
    }
    values.update(kw)
    return config_from_dict(values)


def trainable_weights(result):
    return {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}


# Muon (on the LoRA matrices here: the default muon_params prefix under LoRA) keeps momentum buffers that must come back exactly too.
@pytest.mark.parametrize("group_by_length,optimizer", [(False, "adamw"), (True, "adamw"), (False, "muon")])
def test_kill_and_resume_matches_uninterrupted_run(synth_dir, tmp_path, group_by_length, optimizer):
    optim = {"lr": 1e-3, "warmup_steps": 2, "name": optimizer}
    full = train(make_cfg(synth_dir, tmp_path / "full", group_by_length=group_by_length, optim=optim))
    assert full.step == 6 and not full.stopped_early
    reference = trainable_weights(full)

    killed = train(make_cfg(synth_dir, tmp_path / "split", stop_after=3, group_by_length=group_by_length, optim=optim))
    assert killed.stopped_early and killed.step == 3 and killed.export_dir is None
    # Step 3 was trained but never saved (like a kill): the newest checkpoint is step 2.
    assert ckpt.find_latest_checkpoint(tmp_path / "split").name == ckpt.checkpoint_name(2)
    saved = ckpt.load_optimizer_state(ckpt.find_latest_checkpoint(tmp_path / "split"))
    kinds = {k for state in saved["state"].values() for k in state}
    assert ("momentum_buffer" in kinds) is (optimizer == "muon") and "exp_avg" in kinds
    resumed = train(make_cfg(synth_dir, tmp_path / "split", group_by_length=group_by_length, optim=optim), resume=True)
    assert resumed.step == 6
    got = trainable_weights(resumed)
    assert got.keys() == reference.keys()
    for name, ref in reference.items():
        assert torch.equal(got[name], ref), name
    # The lost step made the interrupted weights differ from the final ones (the check is not vacuous).
    assert not all(torch.equal(trainable_weights(killed)[n], reference[n]) for n in reference)
    assert resumed.samples == full.samples
    assert (tmp_path / "split" / "final" / "config.json").is_file()


def test_resume_without_checkpoint_starts_fresh_and_layout_change_is_refused(synth_dir, tmp_path):
    from pixellm.errors import ConfigError

    res = train(make_cfg(synth_dir, tmp_path / "run", steps=2, save_every=2, val_every=2), resume=True)
    assert res.step == 2 and res.validation and 0.0 <= res.validation[-1]["gIoU"] <= 1.0
    with pytest.raises(ConfigError, match="cannot resume exactly"):
        train(make_cfg(synth_dir, tmp_path / "run", steps=2, batch_size=4, effective_batch=4), resume=True)
    # The failed run forgot accelerate's per-process state: a later run may pick another precision.
    from accelerate.state import AcceleratorState, PartialState

    assert not AcceleratorState._shared_state and not PartialState._shared_state


def test_crash_before_rename_leaves_no_complete_checkpoint(tmp_path):
    w = {"a": torch.arange(4.0)}
    save_checkpoint(tmp_path, 1, w, None, {"step": 1})
    tmp = ckpt.prepare_tmp_dir(tmp_path, 2)
    ckpt.write_rng_state(tmp, 0)
    ckpt.write_main_state(tmp, {"a": torch.ones(4)}, None, {"step": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        ckpt.finalize_checkpoint(tmp_path, 2, fail_before_rename=True)
    assert ckpt.find_latest_checkpoint(tmp_path).name == ckpt.checkpoint_name(1)
    # A half-written folder with the final name but no marker is ignored too.
    broken = tmp_path / ckpt.checkpoint_name(3)
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{")
    assert ckpt.find_latest_checkpoint(tmp_path).name == ckpt.checkpoint_name(1)
    # The next save cleans the stale temporary folder and keeps only the newest `keep`.
    save_checkpoint(tmp_path, 4, w, None, {"step": 4}, keep=1)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4]
    assert not list(tmp_path.glob(ckpt.TMP_PREFIX + "*"))
    assert torch.equal(ckpt.load_trainable(tmp_path / ckpt.checkpoint_name(4))["a"], w["a"])
    with pytest.raises(Exception, match="not a complete checkpoint"):
        ckpt.load_trainer_state(broken)


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    tmp = ckpt.prepare_tmp_dir(tmp_path, 0)
    ckpt.write_rng_state(tmp, 0)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.random(), np.random.rand(), torch.rand(())
    assert ckpt.load_rng_state(tmp, 0)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert not ckpt.load_rng_state(tmp, 1)
