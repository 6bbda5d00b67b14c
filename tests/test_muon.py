"""Muon for hidden matrices + AdamW for the rest (``optim.name: muon``)."""

from __future__ import annotations

import pytest
import torch

from pixellm.errors import ConfigError
from pixellm.train.config import OptimSettings, TrainConfig
from pixellm.train.muon import MuonWithAdamW, muon_lr_ratio, orthogonalize
from pixellm.train.schedule import lr_groups, make_optimizer, warmup_decay_lr


@pytest.mark.parametrize("shape", [(16, 16), (12, 40), (40, 12)])
def test_orthogonalize_flattens_the_singular_values(shape):
    torch.manual_seed(0)
    u, _, v = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    sv = torch.logspace(-1, 0.5, min(shape))
    g = u @ torch.diag(sv) @ v  # singular values 0.1 .. 3.2
    out = orthogonalize(g)
    assert out.shape == g.shape and out.dtype == g.dtype
    s = torch.linalg.svdvals(out)
    # Five quintic iterations map singular values down to ~1/100 of the largest into about
    # [0.7, 1.2] (not exactly 1, by design: a cheap iteration is enough).
    assert s.min() > 0.6 and s.max() < 1.25, s
    # Same singular vectors: the update points where the gradient does.
    assert (out * g).sum() > 0


def test_orthogonalize_keeps_the_input_dtype_and_runs_in_fp32():
    g = torch.randn(8, 24, dtype=torch.bfloat16)
    out = orthogonalize(g)
    assert out.dtype == torch.bfloat16
    ref = orthogonalize(g.float())
    assert torch.allclose(out.float(), ref, atol=1e-2)


def test_lr_groups_send_matching_matrices_to_muon_and_the_rest_to_adamw():
    model = torch.nn.ModuleDict({
        "language_model": torch.nn.ModuleDict({"layers": torch.nn.Linear(4, 6), "norm": torch.nn.LayerNorm(4)}),
        "mm_projector": torch.nn.Linear(4, 4),
    })
    groups = lr_groups(model.named_parameters(), 2e-3, {"language_model": 0.5}, muon_params=["language_model.layers."])
    muon = [g for g in groups if g.get("muon")]
    assert len(muon) == 1 and muon[0]["lr"] == pytest.approx(1e-3)
    assert [id(p) for p in muon[0]["params"]] == [id(model["language_model"]["layers"].weight)]  # not the bias
    rest = {id(p) for g in groups if not g.get("muon") for p in g["params"]}
    assert id(model["language_model"]["layers"].bias) in rest and id(model["mm_projector"].weight) in rest
    with pytest.raises(ConfigError, match="optim.muon_params: no trainable 2-D parameter name starts with 'lm_head'"):
        lr_groups(model.named_parameters(), 2e-3, {}, muon_params=["lm_head"])
    with pytest.raises(ValueError, match="need optim.name=muon"):
        make_optimizer(groups, "adamw", 2e-3, (0.9, 0.95), 0.0)


def _run(opt, params, steps, start=0):
    for step in range(start, start + steps):
        for p in params:
            p.grad = torch.sin(p.detach() * (step + 1)) + 0.1 * step
        opt.step()


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_half_matches_torch_adamw_and_muon_half_follows_the_rule(fused):
    torch.manual_seed(0)
    # w and its transposed twin t share one batched Newton-Schulz call; each must get its own update
    w0, t0, b0 = torch.randn(6, 10), torch.randn(10, 6), torch.randn(10)
    w, t, b = (torch.nn.Parameter(x.clone()) for x in (w0, t0, b0))
    opt = make_optimizer([{"params": [w, t], "lr": 1e-2, "muon": True}, {"params": [b], "lr": 1e-2}], "muon",
                         1e-2, (0.9, 0.95), 0.1, fused=fused, muon_momentum=0.9)
    assert isinstance(opt, MuonWithAdamW)
    b_ref = torch.nn.Parameter(b0.clone())
    ref = torch.optim.AdamW([b_ref], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    # Muon by hand: Nesterov momentum, orthogonalised, decoupled decay, lr x 0.2 sqrt(max dim).
    refs = {id(w): [w0.clone(), torch.zeros_like(w0)], id(t): [t0.clone(), torch.zeros_like(t0)]}
    for step in range(3):
        for p in (w, t, b):
            p.grad = torch.sin(p.detach() * (step + 1))
        b_ref.grad = b.grad.clone()
        for p in (w, t):
            value, buf = refs[id(p)]
            g = p.grad.clone()
            buf = 0.9 * buf + 0.1 * g
            value = value * (1 - 1e-2 * 0.1) - 1e-2 * muon_lr_ratio(p.shape) * orthogonalize(0.1 * g + 0.9 * buf)
            refs[id(p)] = [value, buf]
        opt.step()
        ref.step()
        assert w.grad is not None  # the gradient is handed back after AdamW's half
    assert torch.allclose(b, b_ref, atol=1e-6)
    for p in (w, t):
        assert torch.allclose(p, refs[id(p)][0], atol=1e-5)
    assert set(opt.state[w]) == {"momentum_buffer", "step"} and "exp_avg" in opt.state[b]


def test_state_dict_round_trip_and_schedule_continue_exactly():
    torch.manual_seed(1)
    init = [torch.randn(5, 7), torch.randn(7, 3), torch.randn(7)]

    def fresh():
        params = [torch.nn.Parameter(t.clone()) for t in init]
        groups = [{"params": params[:2], "lr": 1e-2, "muon": True}, {"params": params[2:], "lr": 5e-3}]
        opt = make_optimizer(groups, "muon", 1e-2, (0.9, 0.95), 0.0)
        return params, opt, warmup_decay_lr(opt, 2, 6)

    params, opt, sched = fresh()
    for step in range(6):
        _run(opt, params, 1, step)
        sched.step()
    whole = [p.detach().clone() for p in params]

    params, opt, sched = fresh()
    for step in range(3):
        _run(opt, params, 1, step)
        sched.step()
    saved = {"opt": opt.state_dict(), "sched": sched.state_dict(), "params": [p.detach().clone() for p in params]}
    params, opt, sched = fresh()
    with torch.no_grad():
        for p, v in zip(params, saved["params"]):
            p.copy_(v)
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    for step in range(3, 6):
        _run(opt, params, 1, step)
        sched.step()
    for a, b in zip(params, whole):
        assert torch.equal(a, b)


def test_muon_refuses_tensors_that_are_not_matrices():
    with pytest.raises(ValueError, match="2-D weight matrices only.*\\(4,\\)"):
        MuonWithAdamW([{"params": [torch.nn.Parameter(torch.zeros(4))], "muon": True}], 1e-3, (0.9, 0.95), 0.0)


def test_config_names_and_checks():
    assert OptimSettings().name == "adamw"  # the released recipe
    with pytest.raises(ConfigError, match="optim.muon_momentum"):
        TrainConfig(optim=OptimSettings(name="muon", muon_momentum=1.0)).validate()
    with pytest.raises(ConfigError, match="optim.muon_params"):
        TrainConfig(optim=OptimSettings(name="muon", muon_params=[])).validate()


def test_trainer_refuses_muon_when_fsdp_shards_the_matrices(tmp_path, monkeypatch):
    from test_train_resume import make_cfg

    from pixellm.data.synth import write_synth
    from pixellm.train import fsdp
    from pixellm.train.trainer import Trainer

    write_synth(tmp_path / "data", {"train": 4, "val": 2}, seed=0)
    # a one-process stand-in for an FSDP launch: the check must fire before any optimizer exists
    monkeypatch.setattr(fsdp, "requested", lambda accelerator: True)
    monkeypatch.setattr(fsdp, "shard_model", lambda *args, **kwargs: None)
    cfg = make_cfg(tmp_path / "data", tmp_path / "run", optim={"name": "muon"})
    with pytest.raises(ConfigError, match="optim.name: muon orthogonalises whole weight matrices"):
        Trainer(cfg).run()
