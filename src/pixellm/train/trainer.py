"""The training loop: one CPU, one GPU or many processes through ``accelerate``.

Recipe (supplement Table A.1): AdamW (lr 3e-4, betas (0.9, 0.95), weight decay 0), 100 warm-up
steps then linear decay to 0, effective batch 16 by gradient accumulation, gradient clipping 1.0,
bf16 autocast where it is native (CUDA with bf16; CPUs with AVX512-BF16 / AMX, confirmed by a
timed probe: ``pixellm.train.precision``), fp32 elsewhere. DDP runs with
``find_unused_parameters=True``: with the released "first" mask readout some decoder parameters
get no gradient.

Exact resume: the data order is a fixed plan (``data/mixing.py``), checkpoints hold the trainable
weights, optimizer, scheduler, step counter and every process's RNG states, and the RNG states are
restored *after* the data iterator is created (creating it draws from the RNG), so a run that is
killed and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pixellm.data.dataset import SegmentationDataset, SkipTally
from pixellm.data.mixing import MixedSampler
from pixellm.errors import ConfigError
from pixellm.model.vision import FrozenVisionCache, tower_digest
from pixellm.train import checkpoint as ckpt
from pixellm.train import fsdp
from pixellm.train.config import TrainConfig
from pixellm.train.data import build_training_data, collate_train, sample_lengths, to_device
from pixellm.train.precision import PrecisionChoice, autocast_dtype, resolve_precision
from pixellm.train.schedule import lr_groups, make_optimizer, warmup_decay_lr
from pixellm.train.setup import build_model, count_parameters, trainable_state
from pixellm.train.validate import teacher_forced_iou

logger = logging.getLogger(__name__)

LOSS_PARTS = ("loss", "ce_loss", "ref_loss", "dice_loss")


@dataclass
class TrainResult:
    """What a run did. ``model`` is this process's unwrapped model, ready for inference (under
    FSDP: the consolidated model on the main process, ``None`` elsewhere and after ``stop_after``)."""

    step: int
    output_dir: Path
    export_dir: Path | None
    checkpoint: Path | None
    samples: int
    seconds: float
    samples_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    stopped_early: bool = False
    precision: dict[str, str] = field(default_factory=dict)  # what ``precision`` resolved to, and why
    vision_cache: dict[str, float] | None = None  # FrozenVisionCache.stats() when one was used
    sample_cache: dict[str, float] | None = None  # EncodedItemCache.stats() (loading in the main process)
    model: Any = None
    processor: Any = None


def forget_accelerate_state() -> None:
    """accelerate keeps its state (precision included) in a per-process singleton: forget it, so
    that a later run in this process may choose another precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def flush_denormals() -> None:
    """Flush denormal floats to zero on the CPU (FTZ/DAZ). Late in training, softmax gradients
    of tokens the model has ruled out and optimizer moments of rarely-updated rows decay into
    denormals, and fp32 matmuls on them are far slower (docs/architecture.md, "Measured
    choices"). The flag is per thread and inherited by threads created later: call it before
    the first parallel op."""
    torch.set_flush_denormal(True)


def make_accelerator(cfg: TrainConfig, precision: PrecisionChoice | None = None):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = precision or resolve_precision(cfg.precision)
    return Accelerator(
        mixed_precision=precision.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _validation_batches(cfg: TrainConfig, processor, pad_id: int) -> list[dict[str, Any]] | None:
    """Collated held-out batches (first ``val_samples`` questions, canonical instruction unless
    the processor's ``instruction`` is off)."""
    if not cfg.val_data:
        return None
    from pixellm.data.muse import muse_samples

    samples, _ = muse_samples(cfg.val_data, rng=None, source="val", instruction=processor.instruction)
    samples = samples[: cfg.val_samples]
    if not samples:
        raise ConfigError(f"val_data {cfg.val_data}: no questions")
    ds = SegmentationDataset([samples], processor.encode_example, ["val"])
    bs = max(1, cfg.batch_size * 2)
    batches = []
    for i in range(0, len(ds), bs):
        batches.append(collate_train([ds[j] for j in range(i, min(i + bs, len(ds)))], pad_id))
    return batches


def _is_sharded(accelerator) -> bool:
    """State sharded by accelerate itself (DeepSpeed). FSDP is ours (``pixellm.train.fsdp``):
    the model never goes through accelerate's FSDP plugin, which cannot run on CPUs."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def export_model(model, processor, folder: str | Path, merge_lora: bool = True) -> Path:
    """Save ``model`` (LoRA merged into a copy when present) and ``processor`` to ``folder``.

    Atomic like the checkpoints (``files.atomic_folder``): written under a hidden name, then
    renamed, so a crash never leaves a ``final/`` with only some of its files."""
    import copy

    from pixellm.files import atomic_folder
    from pixellm.train.lora import has_lora
    from pixellm.train.lora import merge_lora as merge

    folder = Path(folder)
    out = model
    if merge_lora and has_lora(model):
        out = merge(copy.deepcopy(model))
    with atomic_folder(folder) as tmp:
        out.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
    return folder


class Trainer:
    """Holds the state of one run; :meth:`run` trains, saves and exports.

    :meth:`run` is the loop: :meth:`train_step` (one optimizer step of ``accum`` micro-batches),
    then, when due, :meth:`log`, :meth:`validate_and_report` and :meth:`checkpoint`. Every
    attribute is created here; :meth:`_setup` (at the start of :meth:`run`) fills the run's
    objects in, and a resume (``_load_resume_state``) the progress counters.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, export_dir: str | Path | None = None,
                 vision_cache: FrozenVisionCache | None = None):
        self.cfg = cfg.validate()
        # a cache filled beforehand (``FrozenVisionCache.add``), used instead of a new empty one
        # when ``cfg.vision_cache_mb`` asks for one (an empty one given is replaced)
        self.given_vision_cache = vision_cache
        self.resume = resume
        self.out = Path(cfg.output_dir)
        self.export_dir = Path(export_dir) if export_dir else self.out / "final"
        # The run's objects, built by _setup().
        self.precision: PrecisionChoice | None = None
        self.acc: Any = None  # accelerate.Accelerator
        self.accum = 1  # micro-batches per optimizer step
        self.deepspeed = False
        self.fsdp = False
        self.model: Any = None
        self.processor: Any = None
        self.pad_id: int | None = None
        self.dataset: SegmentationDataset | None = None
        self.sampler: MixedSampler | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.params: list[torch.nn.Parameter] = []  # the trainable parameters (clipped together)
        self.val_batches: list[dict[str, Any]] | None = None
        self.loader: torch.utils.data.DataLoader | None = None
        self.batches: Any = None  # iterator over the loader
        self.writer: Any = None  # TensorBoard SummaryWriter (main process only)
        self.bar: Any = None  # tqdm progress bar
        # Bad samples: those of earlier runs / file reading (main process) and this process's own.
        self._prior_skips = SkipTally()
        self._own_skips = SkipTally()
        # Progress; a resume restores the "before" counters, history and validation.
        self.start_step = 0
        self.resumed_from: Path | None = None
        self.elapsed_before = 0.0  # training seconds of earlier runs
        self.samples_before = 0
        self.history: list[dict[str, float]] = []  # one record per log
        self.validation: list[dict[str, Any]] = []
        self.step = 0
        self.samples = 0  # samples trained on, all processes, earlier runs included
        self.loop_seconds = 0.0  # seconds inside train_step() in this run
        self.last_checkpoint: Path | None = None
        self.stopped = False  # stop_after ended the run before cfg.steps
        # The logging window: losses and samples since the last log.
        self._window: dict[str, list[float]] = {k: [] for k in LOSS_PARTS}
        self._window_samples = 0
        self._window_t = 0.0

    # -- setup ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        from accelerate.utils import set_seed

        cfg = self.cfg
        flush_denormals()
        self.precision = resolve_precision(cfg.precision)
        self.acc = acc = make_accelerator(cfg, self.precision)
        if acc.is_main_process:
            logger.info("training in %s: %s", self.precision.name, self.precision.reason)
            if cfg.progress:  # on screen too: a wrong guess here costs hours on some CPUs
                print(f"training in {self.precision.name}: {self.precision.reason}")
        world = acc.num_processes
        per_step = cfg.batch_size * world
        if cfg.effective_batch % per_step:
            raise ConfigError(
                f"effective_batch {cfg.effective_batch} is not a multiple of batch_size x processes "
                f"({cfg.batch_size} x {world})"
            )
        self.accum = cfg.effective_batch // per_step
        self.deepspeed = _is_sharded(acc)
        if self.deepspeed:  # the engine does the accumulation and clipping; prepare() needs the batch
            ds = acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
            ds["gradient_accumulation_steps"] = self.accum
            ds["gradient_clipping"] = cfg.optim.grad_clip
        set_seed(cfg.seed)
        self.model, self.processor = build_model(cfg)
        self.fsdp = fsdp.requested(acc)
        if self.fsdp:  # before the optimizer: it must hold the sharded parameters
            fsdp.shard_model(self.model, acc.device, acc.mixed_precision)
        self.pad_id = self.processor.pad_token_id
        self.dataset, rates = build_training_data(cfg.data, self.processor, cfg.seed, cfg.sample_cache_mb * 2**20)
        # Records skipped while reading the files are counted once, by the main process.
        self._prior_skips = SkipTally(self.dataset.read_skips if acc.is_main_process else None)
        self._own_skips = SkipTally()
        lengths = sample_lengths(self.dataset, self.processor) if cfg.group_by_length else None
        self.sampler = MixedSampler(self.dataset.sizes, rates, cfg.steps * self.accum * per_step, seed=cfg.seed,
                                    rank=acc.process_index, world_size=world, batch_size=cfg.batch_size,
                                    lengths=lengths)
        o = cfg.optim
        if o.name == "muon" and (self.fsdp or self.deepspeed):
            raise ConfigError("train config optim.name: muon orthogonalises whole weight matrices, which FSDP and "
                              "DeepSpeed shard; use optim.name=adamw there")
        groups = lr_groups(((n, p) for n, p in self.model.named_parameters() if p.requires_grad), o.lr, o.lr_scale,
                           o.muon_params if o.name == "muon" else ())
        # FSDP's sharded (DTensor) parameters and DeepSpeed's engine keep the default kernel
        self.optimizer = make_optimizer(groups, o.name, o.lr, tuple(o.betas), o.weight_decay,
                                        fused=not (self.fsdp or self.deepspeed), muon_momentum=o.muon_momentum)
        self.scheduler = warmup_decay_lr(self.optimizer, o.warmup_steps, cfg.steps, o.decay_fraction)
        state = self._load_resume_state() if self.resume else None
        if not self.fsdp:
            self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        if state is not None and _is_sharded(acc):
            acc.load_state(str(self.resumed_from / "accelerate"))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.vision_cache_mb:
            self._attach_vision_cache()
        # Under FSDP every process runs the validation forward (its all-gathers are collectives).
        val_here = acc.is_main_process or self.fsdp
        self.val_batches = _validation_batches(cfg, self.processor, self.pad_id) if val_here else None
        # The plan is fixed, so resuming needs only the micro-step counter.
        self.sampler.set_epoch(0, start=self.start_step * self.accum * cfg.batch_size)
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            sampler=self.sampler,
            batch_size=cfg.batch_size,
            collate_fn=partial(collate_train, pad_token_id=self.pad_id),
            num_workers=cfg.num_workers,
            persistent_workers=False,
        )
        self.batches = iter(self.loader)  # draws from the RNG: restore the saved states after this
        if state is not None:
            ckpt.load_rng_state(self.resumed_from, acc.process_index)
        if cfg.tensorboard and acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.start_step or None)

    def _load_resume_state(self) -> dict[str, Any] | None:
        cfg = self.cfg
        folder = ckpt.find_latest_checkpoint(self.out)
        if folder is None:
            if self.acc.is_main_process:
                logger.warning("--resume: no complete checkpoint in %s; starting from scratch", self.out)
            return None
        state = ckpt.load_trainer_state(folder)
        layout = (cfg.batch_size, self.acc.num_processes, self.accum, cfg.steps, cfg.seed)
        saved = tuple(state["layout"][k] for k in ("batch_size", "processes", "accumulation", "steps", "seed"))
        if layout != saved:
            raise ConfigError(
                f"{folder}: cannot resume exactly: (batch_size, processes, accumulation, steps, seed) "
                f"was {saved}, now {layout}"
            )
        if bool(state.get("fsdp", False)) != self.fsdp:
            raise ConfigError(f"{folder}: saved with fsdp={state.get('fsdp', False)}, now fsdp={self.fsdp}")
        if self.fsdp:
            fsdp.load_full_state(self.model, self.optimizer, ckpt.load_trainable(folder),
                                 ckpt.load_optimizer_state(folder), str(folder))
        elif not _is_sharded(self.acc):
            weights = ckpt.load_trainable(folder)
            result = self.model.load_state_dict(weights, strict=False)
            if result.unexpected_keys:
                raise ConfigError(f"{folder}: unexpected weights {result.unexpected_keys[:3]}")
            missing = set(trainable_state(self.model)) - set(weights)
            if missing:
                raise ConfigError(f"{folder}: checkpoint lacks trainable weights {sorted(missing)[:3]}")
            opt = ckpt.load_optimizer_state(folder)
            if opt is not None:
                self.optimizer.load_state_dict(opt)
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_step = int(state["step"])
        self._prior_skips = SkipTally.from_state(state.get("skips", state.get("skipped")) if self.acc.is_main_process
                                                 else None)
        self.elapsed_before = float(state.get("seconds", 0.0))
        self.samples_before = int(state.get("samples", 0))
        self.history = list(state.get("history", []))
        self.validation = list(state.get("validation", []))
        self.resumed_from = folder
        if self.acc.is_main_process:
            logger.info("resuming from %s (step %d)", folder, self.start_step)
        return state

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, step: int, samples: int, seconds: float) -> Path | None:
        acc, cfg = self.acc, self.cfg
        tmp = ckpt.tmp_dir_for(self.out, step)
        if acc.is_main_process:
            ckpt.prepare_tmp_dir(self.out, step)
        acc.wait_for_everyone()
        ckpt.write_rng_state(tmp, acc.process_index)
        if _is_sharded(acc):
            acc.save_state(str(tmp / "accelerate"))
        skipped = self._gathered_skips()
        if self.fsdp:  # collectives: every process gathers, the main process writes
            weights, opt_state = fsdp.full_trainable_state(self.model), fsdp.full_optimizer_state(self.model, self.optimizer)
        if acc.is_main_process:
            state = {
                "step": step,
                "samples": samples,
                "seconds": seconds,
                "scheduler": self.scheduler.state_dict(),
                "skipped": dict(skipped.distinct()),
                "skips": skipped.to_state(),
                "history": self.history[-1000:],
                "validation": self.validation,
                "layout": {"batch_size": cfg.batch_size, "processes": acc.num_processes,
                           "accumulation": self.accum, "steps": cfg.steps, "seed": cfg.seed},
                "config": cfg.to_dict(),
                "fsdp": self.fsdp,
            }
            if _is_sharded(acc):
                ckpt.write_json(tmp / "trainer_state.json", state)
            elif self.fsdp:
                ckpt.write_main_state(tmp, weights, opt_state, state)
            else:
                unwrapped = acc.unwrap_model(self.model)
                ckpt.write_main_state(tmp, trainable_state(unwrapped), self.optimizer.state_dict(), state)
        acc.wait_for_everyone()
        final = None
        if acc.is_main_process:
            final = ckpt.finalize_checkpoint(self.out, step, cfg.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def _gathered_skips(self) -> SkipTally:
        """Bad samples of the whole run so far (all processes; call on every process)."""
        total = self._prior_skips
        if self.acc.num_processes == 1:
            return total.merge(self._own_skips)
        from accelerate.utils import gather_object

        for c in gather_object([self._own_skips.to_state()]):
            total = total.merge(SkipTally.from_state(c))
        return total

    # -- loop -------------------------------------------------------------------------------------
    def validate(self, step: int) -> dict[str, Any] | None:
        acc = self.acc
        result = None
        if self.val_batches:
            model = acc.unwrap_model(self.model)
            with acc.autocast():
                result = {"step": step, **teacher_forced_iou(model, self.val_batches, acc.device)}
            if not acc.is_main_process:  # an FSDP process that took part in the forward
                result = None
        if result is not None:
            self.validation.append(result)
            if self.writer is not None:
                self.writer.add_scalar("val/gIoU", result["gIoU"], step)
                self.writer.add_scalar("val/cIoU", result["cIoU"], step)
        acc.wait_for_everyone()
        return result

    def run(self) -> TrainResult:
        """Set up, train ``cfg.steps`` steps (or up to ``stop_after``), export; see the class doc."""
        cfg = self.cfg
        try:
            self._setup()
            self._start()
            while self.step < cfg.steps:
                self.train_step()
                if self._due(cfg.log_every):
                    self.log()
                if self._due(cfg.val_every):
                    self.validate_and_report()
                if self._due(cfg.save_every):
                    self.checkpoint()
                if cfg.stop_after is not None and cfg.stop_after <= self.step < cfg.steps:
                    self.stopped = True
                    break
        except BaseException:
            self._abandon()
            raise
        return self._finish()

    def _attach_vision_cache(self) -> None:
        """Give the model a :class:`FrozenVisionCache` (``cfg.vision_cache_mb``). Sharded
        parameters are refused: a process whose images all hit would skip the tower's all-gathers
        while the others wait in them."""
        if self.fsdp or (self.deepspeed and self.acc.state.deepspeed_plugin.zero_stage == 3):
            raise ConfigError("train config vision_cache_mb: not with parameters sharded over processes "
                              "(FSDP / ZeRO-3); set it to 0")
        model = self.acc.unwrap_model(self.model)
        if any(p.requires_grad for p in model.vision_tower.parameters()):
            raise ConfigError("train config vision_cache_mb: the vision tower trains here; a cache of its "
                              "features would go stale (set it to 0)")
        cache = self.given_vision_cache
        if cache is not None and not cache.added:  # nothing handed over (e.g. the demo's stage 1 was reused)
            cache = None
        if cache is not None and cache.tower_digest != tower_digest(model.vision_tower):
            raise ConfigError("the vision features given to the trainer were computed by another tower than "
                              f"the one it loaded from vision_weights {self.cfg.vision_weights!r}")
        if cache is not None and cache.added_autocast != autocast_dtype(self.precision.mixed_precision):
            # keyed under another autocast state, they would never be read: not worth their memory
            logger.info("vision features given with autocast %s, this run uses %s: starting an empty cache",
                        cache.added_autocast, self.precision.name)
            cache = None
        model.vision_cache = cache if cache is not None else FrozenVisionCache(self.cfg.vision_cache_mb * 2**20)

    def _abandon(self) -> None:
        """After a failure: close the bar and the writer and forget accelerate's per-process state,
        so that a later run in this process may choose another precision. No collectives: the
        other processes may never get here."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        forget_accelerate_state()

    def _due(self, every: int) -> bool:
        """Whether a periodic action is due after the current step (always after the last one)."""
        return self.step % every == 0 or self.step == self.cfg.steps

    def _start(self) -> None:
        from tqdm.auto import tqdm

        acc, cfg = self.acc, self.cfg
        if acc.is_main_process:
            train_n, total_n = count_parameters(acc.unwrap_model(self.model))
            logger.info("training %s of %s parameters on %d process(es), accumulation %d",
                        f"{train_n:,}", f"{total_n:,}", acc.num_processes, self.accum)
        self.bar = tqdm(total=cfg.steps, initial=self.start_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not (cfg.progress and acc.is_main_process))
        self.step, self.samples, self.loop_seconds = self.start_step, self.samples_before, 0.0
        self._reset_window()
        self.model.train()

    def _reset_window(self) -> None:
        self._window = {k: [] for k in LOSS_PARTS}
        self._window_samples, self._window_t = 0, time.perf_counter()

    def train_step(self) -> None:
        """One optimizer step: ``accum`` micro-batches forward + backward, clipping, update."""
        acc, cfg = self.acc, self.cfg
        t0 = time.perf_counter()
        step_samples = 0
        for micro in range(self.accum):
            batch = next(self.batches)
            skips = batch.pop("skips")
            self._own_skips.add(skips)
            if acc.is_main_process:
                for s in skips:
                    logger.warning("replaced bad sample %s (%s): %s", s.where, s.reason, s.detail)
            batch = to_device(batch, acc.device)
            step_samples += batch["input_ids"].shape[0]
            sync = micro == self.accum - 1
            # ZeRO-2 has no no_sync; accelerate tells the engine where the step ends instead.
            ctx = contextlib.nullcontext() if sync or self.deepspeed else acc.no_sync(self.model)
            if self.deepspeed:
                acc.gradient_state._set_sync_gradients(sync)
            with ctx:
                out = self.model(**batch, return_logits=False)
                # DeepSpeed divides by its gradient_accumulation_steps itself.
                acc.backward(out.loss if self.deepspeed else out.loss / self.accum)
            for k in LOSS_PARTS:
                v = getattr(out, k)
                if v is not None:
                    self._window[k].append(float(v.detach()))
        if cfg.optim.grad_clip and cfg.optim.grad_clip > 0:
            acc.clip_grad_norm_(self.params, cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples += step_samples * acc.num_processes
        self._window_samples += step_samples * acc.num_processes
        self.loop_seconds += time.perf_counter() - t0
        self.bar.update(1)

    def log(self) -> dict[str, float]:
        """Mean losses, lr and throughput since the last log: history, progress bar, TensorBoard."""
        rec = {k: sum(v) / len(v) for k, v in self._window.items() if v}
        rec.update(step=self.step, lr=self.scheduler.get_last_lr()[0],
                   samples_per_s=self._window_samples / max(time.perf_counter() - self._window_t, 1e-9))
        self.history.append(rec)
        self.bar.set_postfix({k.replace("_loss", ""): f"{rec[k]:.3f}" for k in LOSS_PARTS if k in rec}
                             | {"lr": f"{rec['lr']:.1e}", "samples/s": f"{rec['samples_per_s']:.1f}"})
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, self.step)
        self._reset_window()
        return rec

    def validate_and_report(self) -> dict[str, Any] | None:
        """:meth:`validate` at the current step, printed; its time is left out of the throughput."""
        res = self.validate(self.step)
        if res is not None:
            self.bar.write(f"step {self.step}: held-out teacher-forced gIoU={res['gIoU']:.4f} cIoU={res['cIoU']:.4f}")
        self._window_t = time.perf_counter()
        return res

    def checkpoint(self) -> Path | None:
        """:meth:`save` at the current step; its time is left out of the throughput."""
        self.last_checkpoint = self.save(self.step, self.samples, self.elapsed_before + self.loop_seconds)
        self._window_t = time.perf_counter()
        return self.last_checkpoint

    def _finish(self) -> TrainResult:
        """Close the bar, report bad samples, export the final model (unless stopped early)."""
        acc, cfg, stopped = self.acc, self.cfg, self.stopped
        self.bar.close()
        skipped = self._gathered_skips()
        result = TrainResult(
            step=self.step, output_dir=self.out, export_dir=None, checkpoint=self.last_checkpoint,
            samples=self.samples, seconds=self.elapsed_before + self.loop_seconds,
            samples_per_second=(self.samples - self.samples_before) / max(self.loop_seconds, 1e-9),
            history=self.history, validation=self.validation, skipped=dict(skipped.distinct()),
            stopped_early=stopped, precision={"chosen": self.precision.name, "reason": self.precision.reason},
        )
        # FSDP: the whole model gathered into an unsharded one on the main process (None elsewhere).
        final = fsdp.consolidate(self.model, cfg) if self.fsdp and not stopped else None
        if self.dataset.cache is not None and not cfg.num_workers:  # workers keep their own caches
            result.sample_cache = self.dataset.cache.stats()
            logger.info("encoded-sample cache: %s", result.sample_cache)
        if not self.fsdp:
            final = acc.unwrap_model(self.model)
            if final.vision_cache is not None:  # the run's images only: do not hand it on
                result.vision_cache = final.vision_cache.stats()
                logger.info("vision feature cache: %s", result.vision_cache)
                final.vision_cache = None
        if acc.is_main_process:
            if skipped.distinct() or skipped.replacements:
                print(skipped.report())  # distinct bad samples; replacements apart
            self.out.mkdir(parents=True, exist_ok=True)
            # reason -> distinct bad samples (as before), plus the replacements and which samples
            ckpt.write_json(self.out / "skipped.json", {**skipped.distinct(), "details": skipped.to_state()})
            if not stopped:
                result.export_dir = export_model(final, self.processor, self.export_dir)
        result.model, result.processor = final, self.processor
        self.model = None
        self.close()
        return result

    def close(self) -> None:
        """Release everything the run holds; gloo can abort at exit if the process group is left."""
        if self.writer is not None:
            self.writer.close()
        acc = self.acc
        acc.wait_for_everyone()
        acc.end_training()
        self.batches = self.loader = None
        self.optimizer = self.scheduler = None
        gc.collect()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        forget_accelerate_state()


def train(cfg: TrainConfig, resume: bool = False, export_dir: str | Path | None = None,
          vision_cache: FrozenVisionCache | None = None) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue from the newest complete checkpoint in
    ``cfg.output_dir``. The final model + processor are exported to ``export_dir``
    (default ``<output_dir>/final``) unless the run stopped early (``stop_after``).
    ``vision_cache``: frozen-tower features computed beforehand (``Trainer``)."""
    result = Trainer(cfg, resume, export_dir, vision_cache).run()
    if result.export_dir is not None and math.isfinite(result.samples_per_second):
        with open(Path(cfg.output_dir) / "train_summary.json", "w", encoding="utf-8") as f:
            json.dump({"step": result.step, "samples": result.samples, "seconds": result.seconds,
                       "samples_per_second": result.samples_per_second, "validation": result.validation,
                       "skipped": result.skipped, "vision_cache": result.vision_cache,
                       "sample_cache": result.sample_cache}, f, indent=2)
    return result
