"""The optimizer and its schedule: AdamW (or Muon for hidden matrices with AdamW for the rest,
``pixellm.train.muon``), and WarmupDecayLR (the authors' DeepSpeed scheduler): linear warm-up,
then linear decay to 0, optionally holding the peak rate until the last ``decay_fraction`` of the
steps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from pixellm.errors import ConfigError


def warmup_decay_factor(step: int, warmup_steps: int, total_steps: int, decay_fraction: float = 1.0) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): ``(step+1)/warmup`` during warm-up, then
    1 until the last ``decay_fraction`` of ``total_steps`` (never before the warm-up ends), then
    linear down to 0 at ``total_steps``. ``decay_fraction=1`` decays from the end of warm-up (the
    authors' WarmupDecayLR); a smaller one holds the peak rate longer (warmup-stable-decay)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = max(warmup_steps, total_steps - round(decay_fraction * total_steps))
    if step < decay_start:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))


def warmup_decay_lr(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    decay_fraction: float = 1.0) -> LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_decay_factor` (its state is saved in checkpoints)."""
    return LambdaLR(optimizer, lambda s: warmup_decay_factor(s, warmup_steps, total_steps, decay_fraction))


# Devices with a fused AdamW kernel that we rely on. On a CPU the fused kernel is several times
# faster than the default per-parameter loop (the demo's 277 tensors, one thread capped to AVX2: 2.1
# against 11.7 ms per step, docs/training.md "Recipe"), which is 5% of a tiny-model step.
FUSED_DEVICES = ("cpu", "cuda")


def lr_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], lr: float,
              lr_scale: dict[str, float], muon_params: Sequence[str] = ()) -> list[dict]:
    """Optimizer parameter groups: ``lr`` times the multiplier of the longest name prefix in
    ``lr_scale`` that a parameter's name starts with (1 when none does). 2-D parameters whose name
    starts with one of ``muon_params`` go to groups marked ``muon=True`` (for
    :class:`~pixellm.train.muon.MuonWithAdamW`). A prefix that matches no parameter (no 2-D one
    for ``muon_params``) is a ``ConfigError`` (a typo must not silently train at the wrong rate)."""
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    used: set[str] = set()
    used_muon: set[str] = set()
    for name, p in named_params:
        match = max((k for k in lr_scale if name.startswith(k)), key=len, default=None)
        if match is not None:
            used.add(match)
        muon_hits = [k for k in muon_params if name.startswith(k)] if p.ndim == 2 else []
        used_muon.update(muon_hits)
        groups.setdefault((lr_scale[match] if match is not None else 1.0, bool(muon_hits)), []).append(p)
    unused = sorted(set(lr_scale) - used)
    if unused:
        raise ConfigError(f"train config optim.lr_scale: no trainable parameter name starts with {unused[0]!r}")
    unused = sorted(set(muon_params) - used_muon)
    if unused:
        raise ConfigError(f"train config optim.muon_params: no trainable 2-D parameter name starts with {unused[0]!r}")
    return [{"params": ps, "lr": lr * scale, **({"muon": True} if muon else {})}
            for (scale, muon), ps in groups.items()]


def adamw(params: Iterable[torch.nn.Parameter] | list[dict], lr: float, betas: tuple[float, float],
          weight_decay: float, fused: bool = True) -> torch.optim.AdamW:
    """AdamW, with the fused kernel when ``fused`` and every parameter is a plain floating-point
    tensor on a CPU or CUDA device (sharded DTensor parameters keep the default implementation).
    ``params``: parameters, or groups as :func:`lr_groups` makes them."""
    params = list(params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                             fused=_can_fuse(params) if fused else None)


def _can_fuse(params: list) -> bool | None:
    flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    ok = bool(flat) and all(
        type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in FUSED_DEVICES for p in flat
    )
    return ok or None


def make_optimizer(groups: list[dict], name: str, lr: float, betas: tuple[float, float], weight_decay: float,
                   fused: bool = True, muon_momentum: float = 0.95) -> torch.optim.Optimizer:
    """``optim.name``'s optimizer over :func:`lr_groups`' groups: ``adamw``, or ``muon``
    (:class:`~pixellm.train.muon.MuonWithAdamW`: Muon for the groups marked ``muon``)."""
    if name == "muon":
        from pixellm.train.muon import MuonWithAdamW

        return MuonWithAdamW(groups, lr, betas, weight_decay, momentum=muon_momentum,
                             fused=_can_fuse(groups) if fused else None)
    if any(g.get("muon") for g in groups):
        raise ValueError("groups marked muon=True need optim.name=muon")
    return adamw(groups, lr, betas, weight_decay, fused=fused)
