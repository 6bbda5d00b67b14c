"""``TrainConfig``: one YAML file + ``key=value`` overrides -> a typed, validated dataclass.

Defaults follow supplement Table A.1 (AdamW lr 3e-4, betas (0.9, 0.95), weight decay 0, 100
warm-up steps then linear decay, effective batch 16, clipping 1.0, bf16 where supported). A YAML
file sets any field; nested fields use dots on the command line (``lora.r=16``,
``optim.lr=1e-3``). Unknown keys are errors (a typo must not silently train the wrong thing).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from pixellm.conventions import SYSTEM_PROMPT
from pixellm.errors import ConfigError

DATA_KINDS = ("muse", "synth", "refer", "semseg", "vqa")


@dataclass
class DataSource:
    """One training data set and its sampling rate (released mix: sem_seg 2, refer_seg 9, vqa 2,
    multi_reason_seg 4).

    ``kind``: ``muse`` / ``synth`` / ``refer`` / ``semseg`` (MUSE-format JSON, e.g. written by
    ``pixellm data refer2muse`` / ``semseg``) or ``vqa`` (LLaVA-Instruct JSON). ``path``: the JSON
    file; ``image_root``: image folder (default: the JSON's folder). Image names that leave
    ``image_root`` are skipped (``unsafe_path``) unless ``allow_outside_root``. ``pack_turns``:
    up to N consecutive questions about one image (one record) trained as one multi-turn
    conversation, every answer supervised (``data.sample.pack_conversations``); 1 = one
    question per sequence. ``masks: false`` trains this set's answers as text only (codebook
    tokens included): its masks are never read, its targets not decoded, so a sample costs the
    LLM's share of a step only (more questions for the language side; docs/demo-rounds.md).
    """

    name: str = "data"
    kind: str = "muse"
    path: str = ""
    image_root: str | None = None
    rate: float = 1.0
    allow_outside_root: bool = False  # accept image names that leave image_root (../, absolute)
    pack_turns: int = 1
    masks: bool = True


@dataclass
class LoraSettings:
    """peft LoRA on the LLM (docs/training.md recipe: r 8, alpha 16, dropout 0.05 on q_proj, v_proj)."""

    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class OptimSettings:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 100
    # share of ``steps`` at the end over which the rate decays linearly to 0; 1.0 decays from the
    # end of warm-up (the released recipe), less holds the peak rate until then
    decay_fraction: float = 1.0
    grad_clip: float = 1.0
    # Learning-rate multipliers by parameter-name prefix, e.g. {language_model: 0.5, mm_projector:
    # 0.5}; the longest matching prefix wins, other parameters train at ``lr``.
    lr_scale: dict[str, float] = field(default_factory=dict)
    # ``adamw`` (the released recipe) or ``muon``: Muon for the 2-D weights whose names start with
    # one of ``muon_params``, AdamW for the rest (pixellm.train.muon; docs/training.md, "The demo").
    name: Literal["adamw", "muon"] = "adamw"
    muon_params: list[str] = field(default_factory=lambda: ["language_model.model.layers."])
    muon_momentum: float = 0.95


@dataclass
class TrainConfig:
    """Everything a training run needs. ``steps`` counts optimizer updates."""

    # model
    preset: str = "tiny"
    init_from: str | None = None  # a saved PixelLM folder (model + processor) to start from
    base_llm: str | None = None  # an HF causal LM folder (e.g. LLaVA-7B) for a fresh PixelLM
    vision_weights: str | None = None  # a CLIP vision folder (with base_llm, or for a random preset)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # PixelLMConfig fields
    # "pixellm": docs/training.md recipe (CLIP + base LLM frozen, LoRA); "all_but_vision": also the whole
    # LLM (for from-scratch tiny models, where a frozen random LLM cannot learn); "all": everything.
    trainable: Literal["pixellm", "all_but_vision", "all"] = "pixellm"
    lora: LoraSettings = field(default_factory=LoraSettings)
    # data
    data: list[DataSource] = field(default_factory=list)
    val_data: str | None = None  # MUSE-format JSON of the held-out split
    val_samples: int = 200  # questions of the held-out split used by the periodic validation
    max_length: int = 512
    # the template's system text of a new processor: llava_v1's (released) or "" (none)
    system_prompt: str = SYSTEM_PROMPT
    # segmentation questions end in the instruction suffix ("Please respond with segmentation
    # mask.", a random paraphrase per question; the released convention). The saved processor
    # records the choice, and the Predictor follows it.
    instruction: bool = True
    num_workers: int = 0
    # Batch samples of similar length together (less padding; HF's group_by_length).
    group_by_length: bool = False
    # Keep the frozen vision tower's features of each training / validation image in memory, up to
    # this many MiB, so that an image seen again skips the tower (0 = off). Needs a frozen tower
    # and unsharded parameters (not FSDP / ZeRO-3). About 2 x 64 x 128 x 4 bytes an image for
    # the tiny presets; 2 x 1025 x 1024 x 4 (8 MiB) for CLIP ViT-L at 448 px.
    vision_cache_mb: int = 0
    # Keep encoded training samples (pixels, masks, token ids) in memory, up to this many MiB, so
    # that a sample drawn again is not decoded and tokenized again (0 = off). The results are the
    # same; about 32 KiB a question of the tiny presets (an image's pixels kept once), far more at
    # 448 px. With DataLoader workers each worker keeps its own.
    sample_cache_mb: int = 0
    # optimisation
    optim: OptimSettings = field(default_factory=OptimSettings)
    steps: int = 5000
    batch_size: int = 2  # per process and micro-step
    effective_batch: int = 16  # batch_size * processes * accumulation
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Recompute each LLM / CLIP layer's activations in the backward pass instead of keeping them:
    # less memory (docs/scaling.md), ~1 extra forward of compute, identical gradients.
    gradient_checkpointing: bool = False
    seed: int = 0
    # bookkeeping
    output_dir: str = "runs/pixellm"
    save_every: int = 500
    keep_checkpoints: int = 2
    val_every: int = 500
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    stop_after: int | None = None  # stop (as if killed) after this many steps; for tests/debugging

    def validate(self) -> TrainConfig:
        def bad(name: str, msg: str) -> None:
            raise ConfigError(f"train config {name}: {msg}")

        if self.trainable not in ("pixellm", "all_but_vision", "all"):
            bad("trainable", f"unknown value {self.trainable!r} (pixellm | all_but_vision | all)")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            bad("precision", f"unknown value {self.precision!r} (auto | bf16 | fp16 | fp32)")
        for name in ("steps", "batch_size", "effective_batch", "save_every", "val_every", "log_every"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.effective_batch % self.batch_size:
            bad("effective_batch", f"{self.effective_batch} is not a multiple of batch_size {self.batch_size}")
        if self.sample_cache_mb < 0:
            bad("sample_cache_mb", f"must be >= 0, got {self.sample_cache_mb}")
        if self.vision_cache_mb < 0:
            bad("vision_cache_mb", f"must be >= 0, got {self.vision_cache_mb}")
        if self.vision_cache_mb and self.trainable == "all":
            bad("vision_cache_mb", "needs a frozen vision tower, but trainable is 'all' (the features would go stale)")
        if self.optim.lr <= 0:
            bad("optim.lr", f"must be > 0, got {self.optim.lr}")
        if len(self.optim.betas) != 2:
            bad("optim.betas", f"need two values, got {self.optim.betas}")
        for prefix, scale in self.optim.lr_scale.items():
            if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
                bad(f"optim.lr_scale.{prefix}", f"must be a number > 0, got {scale!r}")
        if self.optim.warmup_steps < 0:
            bad("optim.warmup_steps", "must be >= 0")
        if not 0 < self.optim.decay_fraction <= 1:
            bad("optim.decay_fraction", f"must be in (0, 1], got {self.optim.decay_fraction}")
        if not 0 <= self.optim.muon_momentum < 1:
            bad("optim.muon_momentum", f"must be in [0, 1), got {self.optim.muon_momentum}")
        if self.optim.name == "muon" and not self.optim.muon_params:
            bad("optim.muon_params", "is empty: Muon would update no parameter (use optim.name=adamw)")
        for i, d in enumerate(self.data):
            if d.kind not in DATA_KINDS:
                bad(f"data[{i}].kind", f"unknown kind {d.kind!r} ({' | '.join(DATA_KINDS)})")
            if d.rate <= 0:
                bad(f"data[{i}].rate", f"must be > 0, got {d.rate}")
            if d.pack_turns < 1:
                bad(f"data[{i}].pack_turns", f"must be >= 1, got {d.pack_turns}")
            if not d.path:
                bad(f"data[{i}].path", "is empty")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- building from dicts / YAML / overrides -------------------------------------------------------


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type ``tp`` (dataclasses, lists, optionals)."""
    origin = get_origin(tp)
    args = get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"train config {where}: expected a mapping, got {value!r}")
        return _build(tp, value, where + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"train config {where}: {value!r} is not one of {list(args)}")
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        rest = [a for a in args if a is not type(None)]
        return _coerce(value, rest[0], where)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"train config {where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"train config {where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, str):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"train config {where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"train config {where}: expected {tp.__name__}, got {value!r}") from None
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"train config: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """``key=value`` values are YAML scalars/flow collections: ``1e-3``, ``true``, ``[a, b]``."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries into a nested dict (``data.0.rate=2`` indexes lists; as the
    last key, the index one past the end appends: ``data.1={name: b, path: b.json}``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key part")
        node: Any = values
        for p in parts[:-1]:
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"override {item!r}: no list index {p}")
                node = node[int(p)]
            else:
                node = node.setdefault(p, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {item!r}: {p} is not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) > len(node):
                raise ConfigError(f"override {item!r}: no list index {last}")
            if int(last) == len(node):
                node.append(_parse_scalar(raw))
            else:
                node[int(last)] = _parse_scalar(raw)
        else:
            node[last] = _parse_scalar(raw)
    return values


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values).validate()


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults with ``path=None``) and apply overrides.

    Relative data paths in the YAML are kept as written (resolved against the working
    directory), like the released scripts.
    """
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: invalid YAML ({str(err).splitlines()[0]})") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        values = loaded
    values = apply_overrides(values, list(overrides or []))
    return config_from_dict(values)
