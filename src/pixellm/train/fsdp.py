"""Fully sharded data parallel for the trainer: torch FSDP2 (``fully_shard``), CPU (gloo) and GPU.

Why torch's ``fully_shard`` and not accelerate's FSDP plugin: accelerate (1.15) turns FSDP on only
for GPU-type backends (``MULTI_GPU`` and friends); with ``ACCELERATE_USE_CPU`` a multi-process run
is ``MULTI_CPU`` and the plugin is ignored, so its FSDP path cannot run (or be tested) on a CPU.
Its FSDP2 auto-wrap also raises when a class of ``_no_split_modules`` is absent from the model
(``Qwen2DecoderLayer`` in a LLaMA model). So the trainer shards the model itself, the same way on
every device: each transformer block (CLIP encoder layers and the LLM's decoder layers, whatever
their class) is one FSDP unit, everything else (embeddings, projectors, the pixel decoder) the root
unit. The request is the environment variable that ``accelerate launch`` sets from
``configs/accelerate/fsdp.yaml`` (``ACCELERATE_USE_FSDP=true``); the model is then not given to
``accelerator.prepare``.

Checkpoints keep the unsharded format of the single-process trainer: the trainable weights are
gathered (``full_tensor``), the optimizer state too, keyed by parameter name; the main process
writes both. The export
(``consolidate``) gathers the whole model to the main process and loads it into a freshly built
unsharded model (``build_model``), so ``save_pretrained`` writes one ordinary safetensors model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from pixellm.errors import ConfigError
from pixellm.train.precision import autocast_dtype

if TYPE_CHECKING:
    from pixellm.train.config import TrainConfig


def requested(accelerator) -> bool:
    """FSDP asked for (``accelerate launch --config_file configs/accelerate/fsdp.yaml`` or
    ``ACCELERATE_USE_FSDP=true torchrun ...``) and more than one process."""
    return accelerator.num_processes > 1 and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def block_classes(model: torch.nn.Module) -> list[type]:
    """The repeated transformer-block classes of ``model``: CLIP's encoder layer and the configured
    LLM's decoder layer (LLaMA, Qwen2, ...), i.e. transformers' ``GradientCheckpointingLayer``s.
    Not ``_no_split_modules``: transformers 5 merges the sub-models' lists into it, which brings
    in ``CLIPVisionEmbeddings``, whose ``forward`` PixelLM bypasses (``model/vision.py`` calls its
    parts), so as its own FSDP unit it would never be gathered."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    found = {type(m) for m in model.modules() if isinstance(m, GradientCheckpointingLayer)}
    if not found:
        raise ConfigError(f"FSDP: no transformer block (GradientCheckpointingLayer) in {type(model).__name__}")
    return sorted(found, key=lambda c: c.__name__)


def shard_model(model: torch.nn.Module, device: torch.device, mixed_precision: str) -> torch.nn.Module:
    """Shard ``model`` in place over all processes (one FSDP unit per transformer block, the rest
    in the root unit). Parameters become ``DTensor`` shards: build the optimizer afterwards.

    ``mixed_precision`` (accelerate's: ``no`` / ``bf16`` / ``fp16``) becomes autocast around the
    forward, as ``accelerator.prepare`` does for DDP; parameters and gradient reduction stay fp32
    (the pixel decoder runs in fp32 on CPU and needs fp32 weights there)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = torch.distributed.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    model.to(device)
    classes = tuple(block_classes(model))
    blocks = [m for m in model.modules() if isinstance(m, classes)]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    forward = _with_every_gradient(model, model.forward)
    dtype = autocast_dtype(mixed_precision)
    if dtype is not None:
        forward = torch.autocast(device_type=device.type, dtype=dtype)(forward)
    model.forward = forward
    return model


def _with_every_gradient(model: torch.nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` whose loss touches every trainable parameter of the root unit with weight 0.

    FSDP2 reduce-scatters the gradients that exist. A parameter that one process used and another
    did not (samples without targets leave the token fusion and the detail path without a
    gradient) makes the processes' collectives differ in size, and gloo aborts ("Received data
    size doesn't match expected size"). DDP's answer is ``find_unused_parameters``; here a zero
    term gives every trainable root parameter a gradient everywhere: the loss value is unchanged
    (x + 0.0 == x) and so is every gradient. Inside the root forward its parameters are unsharded
    plain tensors; the blocks' (resharded ``DTensor``s) always get gradients."""
    from torch.distributed.tensor import DTensor

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        loss = getattr(out, "loss", None)
        if loss is not None and torch.is_grad_enabled():
            touch = [p.reshape(-1)[:1].sum() for p in model.parameters()
                     if p.requires_grad and not isinstance(p, DTensor)]
            if touch:
                out.loss = loss + torch.stack(touch).sum().to(loss.dtype) * 0.0
        return out

    return wrapped


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu()


def reshard(model: torch.nn.Module) -> None:
    """Back to the sharded parameters. The root unit stays gathered after a forward without
    backward (the validation): its parameters are then plain tensors, not the optimizer's."""
    model.reshard()


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, unsharded (a collective: call on every process)."""
    reshard(model)
    return {n: _full(p) for n, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state unsharded and keyed by parameter name (a collective: every process
    gathers in the same order)."""
    reshard(model)
    names = {id(p): n for n, p in model.named_parameters()}
    state: dict[str, dict[str, Any]] = {}
    groups = []
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            saved = optimizer.state.get(p)
            if saved:
                state[names[id(p)]] = {k: _full(v) if torch.is_tensor(v) else v for k, v in saved.items()}
    return {"state": state, "param_groups": groups}


def _shard_like(param: torch.Tensor, value: Any) -> Any:
    """A full optimizer-state tensor cut like ``param`` (a ``DTensor`` shard); others as they are."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape:
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value


def _load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any],
                          where: str) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    if order != [n for g in saved["param_groups"] for n in g["params"]]:
        raise ConfigError(f"{where}: the optimizer's parameters differ from the checkpoint's")
    state = {i: {k: _shard_like(params[n], v) for k, v in saved["state"][n].items()}
             for i, n in enumerate(order) if n in saved["state"]}
    groups, start = [], 0
    for g in saved["param_groups"]:
        groups.append({**g, "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    where: str,
) -> None:
    """Load unsharded trainable weights and optimizer state (as saved by the two functions above)
    into the sharded model and optimizer; every process passes the whole state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) - trainable:
        raise ConfigError(f"{where}: unexpected weights {sorted(set(weights) - trainable)[:3]}")
    if trainable - set(weights):
        raise ConfigError(f"{where}: checkpoint lacks trainable weights {sorted(trainable - set(weights))[:3]}")
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    if optimizer_state is not None:
        _load_optimizer_state(model, optimizer, optimizer_state, where)


def consolidate(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module | None:
    """The whole sharded model gathered into an ordinary (unsharded) one on the main process
    (``None`` elsewhere); a collective. Rebuilt with ``build_model(cfg)`` (same architecture and
    LoRA layout), then every weight is overwritten with the trained one (strict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from pixellm.train.setup import build_model

    reshard(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    plain, _ = build_model(cfg)
    plain.load_state_dict(state, strict=True)
    return plain
