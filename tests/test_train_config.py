"""YAML + key=value configs, the WarmupDecayLR schedule and the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixellm.errors import ConfigError
from pixellm.train.config import OptimSettings, TrainConfig, apply_overrides, load_config
from pixellm.train.schedule import adamw, lr_groups, warmup_decay_factor, warmup_decay_lr

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_table_a1():
    cfg = TrainConfig()
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == [0.9, 0.95] and cfg.optim.weight_decay == 0
    assert cfg.optim.warmup_steps == 100 and cfg.optim.grad_clip == 1.0 and cfg.effective_batch == 16
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 10\noptim:\n  lr: 0.001\ndata:\n  - {name: a, kind: muse, path: a.json, rate: 2}\n")
    cfg = load_config(path, ["optim.betas=[0.8, 0.9]", "lora.enabled=false", "data.0.rate=3", "val_data=null",
                             "lora.target_modules=q_proj,k_proj"])
    assert cfg.steps == 10 and cfg.optim.lr == 1e-3 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.lora.enabled is False and cfg.data[0].rate == 3.0 and cfg.val_data is None
    assert cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert apply_overrides({}, ["a.b=1"]) == {"a": {"b": 1}}
    # one past the end appends a list entry; further out is an error
    assert apply_overrides({"d": [1]}, ["d.1={x: 2}"]) == {"d": [1, {"x": 2}]}
    with pytest.raises(ConfigError, match="no list index 3"):
        apply_overrides({"d": [1]}, ["d.3=2"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("stepz=3", "unknown key stepz"),
        ("optim.lrr=3", "unknown key optim.lrr"),
        ("steps=abc", "steps: expected int"),
        ("trainable=some", "trainable"),
        ("effective_batch=15", "not a multiple of batch_size"),
        ("lora.enabled=maybe", "expected true/false"),
        ("noequals", "not key=value"),
        ("data=[{kind: zip, path: x}]", r"data\[0\].kind"),
    ],
)
def test_bad_values_raise_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)


def test_warmup_stable_decay_holds_the_peak_until_the_last_fraction():
    # 1300 steps, 50 warm-up, the last 20% decaying: the demo's kind of schedule
    factors = [warmup_decay_factor(s, 50, 1300, decay_fraction=0.2) for s in range(1301)]
    assert factors[0] == pytest.approx(1 / 50) and factors[49] == pytest.approx(1.0)
    assert all(f == 1.0 for f in factors[50:1041])  # the peak until step 1040
    assert factors[1170] == pytest.approx(0.5) and factors[1300] == 0.0
    assert all(a > b for a, b in zip(factors[1040:], factors[1041:]))  # then strictly down
    # a fraction longer than what follows the warm-up decays from the end of the warm-up
    assert warmup_decay_factor(5, 4, 10, decay_fraction=1.0) == warmup_decay_factor(5, 4, 10)
    assert warmup_decay_factor(4, 4, 10, decay_fraction=0.9) == pytest.approx(1.0)
    assert warmup_decay_factor(7, 4, 10, decay_fraction=0.9) == pytest.approx(0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="optim.decay_fraction"):
            TrainConfig(optim=OptimSettings(decay_fraction=bad)).validate()


def test_warmup_then_linear_decay():
    assert warmup_decay_factor(0, 4, 10) == pytest.approx(0.25)
    assert warmup_decay_factor(3, 4, 10) == pytest.approx(1.0)
    assert warmup_decay_factor(4, 4, 10) == pytest.approx(1.0)
    assert warmup_decay_factor(7, 4, 10) == pytest.approx(0.5)
    assert warmup_decay_factor(10, 4, 10) == 0.0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_decay_lr(opt, 4, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0]) and lrs[-1] == pytest.approx(2.0 / 6)
    # The scheduler state resumes (it is saved in checkpoints as JSON).
    import json

    state = json.loads(json.dumps(sched.state_dict()))
    sched2 = warmup_decay_lr(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0), 4, 10)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_lr_scale_groups_by_longest_prefix_and_the_schedule_scales_each_group():
    model = torch.nn.ModuleDict({
        "language_model": torch.nn.Linear(2, 2),
        "mm_projector": torch.nn.Linear(2, 2),
        "out_mm_projector": torch.nn.Linear(2, 2),
    })
    groups = lr_groups(model.named_parameters(), 2e-3, {"language_model": 0.5, "language_model.bias": 0.25,
                                                        "mm_projector": 0.5})
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    assert by_lr[1e-3] == {id(model["language_model"].weight), *map(id, model["mm_projector"].parameters())}
    assert by_lr[5e-4] == {id(model["language_model"].bias)}
    assert by_lr[2e-3] == set(map(id, model["out_mm_projector"].parameters()))  # a prefix, not a substring
    opt = adamw(groups, 2e-3, (0.9, 0.95), 0.0)
    sched = warmup_decay_lr(opt, warmup_steps=2, total_steps=10)
    assert sorted(sched.get_last_lr()) == pytest.approx(sorted(lr / 2 for lr in by_lr))  # step 0: (0+1)/2
    with pytest.raises(ConfigError, match="optim.lr_scale: no trainable parameter name starts with 'lm_head'"):
        lr_groups(model.named_parameters(), 2e-3, {"lm_head": 0.5})
    with pytest.raises(ConfigError, match="optim.lr_scale.language_model"):
        TrainConfig(optim=OptimSettings(lr_scale={"language_model": 0})).validate()


def test_adamw_fused_on_cpu_matches_the_default_kernel():
    torch.manual_seed(0)
    init = [torch.randn(7, 5), torch.randn(5)]
    runs = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = adamw(params, 1e-2, (0.9, 0.95), 0.1, fused=fused)
        assert bool(opt.param_groups[0]["fused"]) is fused
        for step in range(5):
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1))
            opt.step()
        runs[fused] = params
    for a, b in zip(runs[True], runs[False]):
        torch.testing.assert_close(a, b)
    # A parameter on a device without our fused kernel keeps the default implementation.
    meta = adamw([torch.nn.Parameter(torch.zeros(2, device="meta"))], 1e-3, (0.9, 0.95), 0.0)
    assert not meta.param_groups[0]["fused"]


@pytest.mark.parametrize("name", ["tiny", "pixellm-7b", "pixellm-13b"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.preset == {"tiny": "tiny-demo"}.get(name, name)
    if name != "tiny":
        # Released mix and sampling rates (docs/training.md), LoRA, Table A.1 recipe.
        # Like the released HybridDataset: the rate of a type is shared by its data sets.
        rates: dict[str, float] = {}
        for d in cfg.data:
            group = d.name.split("/")[0]
            rates[group] = rates.get(group, 0.0) + d.rate
        assert rates == pytest.approx({"sem_seg": 2, "refer_seg": 9, "vqa": 2, "multi_reason_seg": 4})
        assert cfg.lora.enabled and cfg.trainable == "pixellm" and cfg.optim.lr == 3e-4
        assert cfg.effective_batch == 16 and cfg.max_length == 512


def test_tiny_yaml_matches_the_demo_recipe(tmp_path):
    from pixellm.demo import demo_config

    yaml_cfg = load_config(ROOT / "configs" / "tiny.yaml").to_dict()
    demo = demo_config("demo_out").to_dict()
    for key in ("data", "val_data", "vision_weights", "output_dir", "save_every", "val_every", "keep_checkpoints"):
        yaml_cfg.pop(key), demo.pop(key)
    assert yaml_cfg == demo


TEXT_ONLY_OVERRIDES = [  # docs/demo-rounds.md, eleventh round: the demo recipe plus a text-only split
    "data.1={name: synth_text, kind: synth, path: data/synth/train_text.json, rate: 0.5, masks: false}",
    "steps=970", "batch_size=24", "effective_batch=24", "vision_cache_mb=1024",
]


def test_the_documented_text_only_variant_is_the_demo_recipe_plus_one_source():
    base = load_config(ROOT / "configs" / "tiny.yaml").to_dict()
    text = load_config(ROOT / "configs" / "tiny.yaml", TEXT_ONLY_OVERRIDES).to_dict()
    assert text["data"][0] == base["data"][0] and base["data"][0]["masks"] is True
    assert text["data"][1]["masks"] is False and text["data"][1]["path"].endswith("train_text.json")
    assert (text["steps"], text["batch_size"], text["effective_batch"]) == (970, 24, 24)
    docs = (ROOT / "docs" / "demo-rounds.md").read_text()
    assert all(o in docs for o in TEXT_ONLY_OVERRIDES)


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2"])
def test_accelerate_configs_are_valid_yaml(name):
    import yaml

    data = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
    assert data["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    assert data["mixed_precision"] == "bf16"
    if name == "fsdp":
        # FSDP2, as tests/test_train_fsdp.py runs it; no layer class pinned (the trainer wraps
        # whatever decoder layer the configured LLM has: LLaMA, Qwen2, ...).
        assert data["fsdp_config"]["fsdp_version"] == 2
        assert "fsdp_transformer_layer_cls_to_wrap" not in data["fsdp_config"]
