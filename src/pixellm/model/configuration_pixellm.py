"""``PixelLMConfig``: everything needed to build a PixelLM model, and the named presets.

Presets are data (litgpt-style): ``PixelLMConfig.from_preset("pixellm-7b")``. The default
field values reproduce the released model; the paper's variants are switches:

- ``token_fusion``: ``"weighted_sum"`` (released; learnable weights initialised to 1/N) or
  ``"linear"`` (a learned Linear(N*C, C) per scale).
- ``mask_readout``: ``"first"`` (released: mask token 0) or ``"mean"`` (literal Algorithm 1).
- ``shared_codebook``: one group of N tokens shared by all L scales (Table A.2) instead of N*L.
- ``refinement_alpha``: target-refinement weight (1.0 = plain BCE).

Presets carry sizes only (N tokens per scale, the selected layers = L scales, whether the
codebook is shared, the LLM's base vocabulary); the ids of the added tokens are ``None`` until a
tokenizer has them. ``pixellm.build`` does that in one step (tokenizer -> added tokens ->
:meth:`PixelLMConfig.set_token_ids` -> model); this package imports no tokenizer code.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from pixellm.errors import ConfigError

# CLIP ViT-L/14-336, the released vision tower.
CLIP_VIT_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


@strict
class PixelLMConfig(PreTrainedConfig):
    r"""Configuration of a PixelLM model.

    Args:
        vision_config: CLIP vision config (``clip_vision_model``).
        text_config: config of any HF causal LM (LLaMA by default).
        vision_tower: local folder (or hub name) of the CLIP weights, used by importers.
        vision_select_layers: CLIP ``hidden_states`` indices; scale 0 (coarse) first. The first
            one also feeds the LLM image tokens.
        image_size: side of the square (padded) model input; CLIP position embeddings are
            interpolated when it differs from ``vision_config.image_size``.
        pos_interpolation: ``"released"`` reproduces the released checkpoint's interpolation
            (last row treated as CLS); ``"correct"`` is the standard one.
        llm_image_grid: the first selected layer's patch grid is resized to G x G LLM tokens.
        num_tokens_per_scale: N codebook tokens per scale.
        shared_codebook: one group of N tokens for all L scales (else N per scale); the number of
            codebook tokens per target is :attr:`num_codebook_tokens`.
        codebook_token_ids, im_start_token_id, im_end_token_id: ids of the added tokens; ``None``
            until :meth:`set_token_ids` records them (``pixellm.build`` does).
        decoder_dim ...: pixel decoder sizes (SAM-style two-way transformer per scale).
        pixel_detail_channels: 0 (released) or the width of an optional full-resolution conv
            path over the input pixels whose features refine the final mask (useful for tiny
            images whose patch grid is coarse).
        pixel_detail_from_tokens: the detail path also reads the vision tower's patch tokens (the
            first selected layer), each decoded by a linear map to its patch's pixels, so that its
            per-pixel features know which object a pixel belongs to, not only its colour (needs
            ``pixel_detail_channels``; off in the released model).
        pixel_detail_act: the detail path's activation, ``"gelu"`` or ``"relu"`` (cheaper on a
            CPU: no erf forward and backward over every pixel of every target's features).
    """

    model_type = "pixellm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=dict(CLIP_VIT_L_336)
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_tower: str = "openai/clip-vit-large-patch14-336"
    vision_select_layers: list[int] | tuple[int, ...] = (-2, -11)
    image_size: int = 448
    pos_interpolation: Literal["released", "correct"] = "correct"
    llm_image_grid: int = 16
    image_token_index: int = -200
    mask_padded_image_tokens: bool = True
    projector_hidden_act: str = "gelu"
    # attention kernel of the LLM (None = transformers' default); the tiny preset uses "eager"
    # (faster on CPU at its sizes: docs/architecture.md, "Measured choices")
    llm_attn_implementation: str | None = None

    # codebook and fusion
    num_tokens_per_scale: int = 3
    shared_codebook: bool = False
    token_fusion: Literal["weighted_sum", "linear"] = "weighted_sum"
    learnable_fusion_weights: bool = True
    mask_readout: Literal["first", "mean"] = "first"
    codebook_token_ids: list[int] | None = None
    im_start_token_id: int | None = None
    im_end_token_id: int | None = None

    # pixel decoder
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    pixel_detail_channels: int = 0
    pixel_detail_from_tokens: bool = False
    pixel_detail_act: Literal["gelu", "relu"] = "gelu"

    # losses (Table A.1)
    ce_loss_weight: float = 1.0
    # the cross-entropy of each answer's first token ("The ..." or "There is no ...": whether there
    # is a target at all) counts this many times; 1.0 = the released plain mean
    answer_start_loss_weight: float = 1.0
    ref_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    refinement_alpha: float = 2.0

    # LoRA (applied by the trainer through peft; recorded here when active so that
    # from_pretrained can rebuild the adapter before loading an unmerged checkpoint)
    lora: dict | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.vision_select_layers = [int(x) for x in self.vision_select_layers]
        self.validate_pixellm()

    # -- derived sizes ---------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        return len(self.vision_select_layers)

    @property
    def num_codebook_tokens(self) -> int:
        """Tokens per target group: N (shared codebook) or N*L. The one rule: the processor, the
        importer and the model all read it here."""
        n = self.num_tokens_per_scale
        return n if self.shared_codebook else n * self.num_scales

    @property
    def num_image_tokens(self) -> int:
        return self.llm_image_grid**2

    @property
    def vision_grid(self) -> int:
        return self.image_size // self.vision_config.patch_size

    def validate_pixellm(self) -> None:
        def bad(field: str, msg: str) -> None:
            raise ConfigError(f"PixelLMConfig.{field}: {msg}")

        if self.num_scales < 1:
            bad("vision_select_layers", "select at least one layer")
        n_states = self.vision_config.num_hidden_layers + 1
        for layer in self.vision_select_layers:
            if not -n_states <= layer < n_states:
                bad("vision_select_layers", f"layer {layer} out of range for {n_states - 1} CLIP layers")
        if self.image_size % self.vision_config.patch_size:
            bad("image_size", f"{self.image_size} is not a multiple of patch size {self.vision_config.patch_size}")
        if self.llm_image_grid > self.vision_grid:
            bad("llm_image_grid", f"{self.llm_image_grid} exceeds the patch grid {self.vision_grid}")
        if self.token_fusion not in ("weighted_sum", "linear"):
            bad("token_fusion", f"unknown value {self.token_fusion!r} (weighted_sum | linear)")
        if self.mask_readout not in ("first", "mean"):
            bad("mask_readout", f"unknown value {self.mask_readout!r} (first | mean)")
        if self.pos_interpolation not in ("released", "correct"):
            bad("pos_interpolation", f"unknown value {self.pos_interpolation!r} (released | correct)")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 8:
            bad("decoder_dim", "must be divisible by decoder_heads and by 8")
        if self.num_tokens_per_scale < 1:
            bad("num_tokens_per_scale", f"must be >= 1, got {self.num_tokens_per_scale}")
        if self.pixel_detail_from_tokens and not self.pixel_detail_channels:
            bad("pixel_detail_from_tokens", "needs the detail path (pixel_detail_channels > 0)")
        if self.pixel_detail_act not in ("gelu", "relu"):
            bad("pixel_detail_act", f"unknown value {self.pixel_detail_act!r} (gelu | relu)")
        if not self.answer_start_loss_weight >= 0:
            bad("answer_start_loss_weight", f"must be >= 0, got {self.answer_start_loss_weight}")
        if self.codebook_token_ids is not None:
            ids = list(self.codebook_token_ids)
            if len(ids) != self.num_codebook_tokens:
                bad("codebook_token_ids", f"{len(ids)} ids for {self.num_codebook_tokens} codebook tokens")
            added = [*ids, *(i for i in (self.im_start_token_id, self.im_end_token_id) if i is not None)]
            if len(set(added)) != len(added):
                bad("codebook_token_ids", f"the added tokens' ids {added} are not distinct")
            vocab = self.text_config.vocab_size
            if not all(0 <= i < vocab for i in added):
                bad("codebook_token_ids", f"ids {added} do not all lie in the vocabulary of {vocab}")

    # -- the added tokens ----------------------------------------------------------------------
    def set_token_ids(
        self, codebook_token_ids: list[int], im_start: int | None, im_end: int | None, vocab_size: int | None = None
    ) -> None:
        """Record the ids of the added tokens (after they were added to the tokenizer) and the
        tokenizer's size ``vocab_size`` (added tokens included).

        ``text_config.vocab_size`` (the LLM's embedding rows) grows to ``vocab_size`` when it is
        smaller and is never shrunk: a preset's base vocabulary (LLaMA's 32000) becomes the
        tokenizer's size (32008), a base LLM or checkpoint with spare rows keeps them.
        ``pixellm.build`` is the one caller in the package: it reads the ids from the tokenizer.
        """
        ids = [int(i) for i in codebook_token_ids]
        if len(ids) != self.num_codebook_tokens:
            raise ConfigError(
                f"PixelLMConfig.codebook_token_ids: {len(ids)} ids for {self.num_codebook_tokens} codebook tokens"
            )
        if vocab_size is not None and vocab_size > self.text_config.vocab_size:
            self.text_config.vocab_size = int(vocab_size)
        self.codebook_token_ids = ids
        self.im_start_token_id = None if im_start is None else int(im_start)
        self.im_end_token_id = None if im_end is None else int(im_end)
        self.validate_pixellm()

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PixelLMConfig:
        """Build a named configuration: ``pixellm-7b``, ``pixellm-13b``, ``tiny`` or ``tiny-demo``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = copy.deepcopy(PRESETS[name]())
        kwargs.update(overrides)
        return cls(**kwargs)


def _llama(hidden: int, layers: int, heads: int, intermediate: int, vocab: int, **extra: Any) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        **extra,
    }


# Base vocabularies, before the added tokens (registering them grows the vocabulary to the
# tokenizer's size): LLaMA's, and the tiny tokenizer's (``pixellm.build.tiny_tokenizer``'s default).
LLAMA_VOCAB_SIZE = 32000
TINY_VOCAB_SIZE = 1024


def _released(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    # N=3, L=2 (the defaults): with LLaMA's tokenizer the 8 added tokens get ids 32000..32007 and
    # the vocabulary becomes 32008, as released (docs/architecture.md).
    return {
        "vision_config": {"model_type": "clip_vision_model", **CLIP_VIT_L_336},
        "text_config": _llama(hidden, layers, heads, intermediate, LLAMA_VOCAB_SIZE),
        "pos_interpolation": "released",
    }


def _tiny() -> dict:
    return {
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "patch_size": 8,
            "image_size": 64,
            "projection_dim": 128,
            "hidden_act": "quick_gelu",
        },
        "text_config": _llama(256, 4, 4, 688, TINY_VOCAB_SIZE),
        "vision_tower": "",
        "vision_select_layers": [-1, -3],
        "image_size": 64,
        "llm_image_grid": 4,
        "decoder_dim": 64,
        "decoder_heads": 4,
        "decoder_mlp_dim": 256,
        "pixel_detail_channels": 16,
        # 4x the Table A.1 dice weight: in the demo (1000 steps, seed 0) held-out generated gIoU
        # 0.492 against 0.474 at 0.5 and 0.447 at 4.0 (teacher-forced 0.819 / 0.814 / 0.810)
        "dice_loss_weight": 2.0,
        "llm_attn_implementation": "eager",
    }


def _tiny_demo() -> dict:
    """The ``tiny`` preset as ``pixellm demo`` trains it: a 128-wide LLM (a quarter of the FLOPs
    per token; the synthetic language needs little width) that reads the 4 x 4 pooled grid (the
    full 8 x 8 grid learned no better over 3 seeds and costs 1.4x per step;
    docs/demo-rounds.md), with an 8-channel pixel detail path and the tower's last layer as its one scale."""
    cfg = _tiny()
    # Initialised at 1/sqrt(width) instead of LLaMA's 0.02 (tuned for 4096-wide models): at 0.02 a
    # 128-wide LLaMA barely learns to look a named object up among the image tokens
    # (benchmarks/lookup_init.py); the demo's held-out generated gIoU rose on each of 5 seeds (mean
    # 0.496 -> 0.537; docs/demo-rounds.md).
    cfg["text_config"] = _llama(128, 4, 4, 344, TINY_VOCAB_SIZE, initializer_range=128**-0.5)
    # 8 channels learned as well as 16 (seeds 0 / 1: generated gIoU 0.514 / 0.517, teacher-forced
    # 0.893 / 0.886) with a quarter of the path's convolution FLOPs (docs/demo-rounds.md)
    cfg["pixel_detail_channels"] = 8
    # The detail path also reads the tower's patch tokens: the masks no longer spread over a
    # touching object of the same colour (over 8 seeds teacher-forced gIoU 0.955 against 0.904,
    # held-out generated gIoU 0.666 against 0.624; docs/demo-rounds.md, thirteenth round)
    cfg["pixel_detail_from_tokens"] = True
    # Each answer's first token ("The ..." or "There is no ...") counts 3 times in the text loss:
    # over 8 seeds 144 against 129 of 259 no-target questions answered right, held-out gIoU 0.624
    # against 0.616 (both within the spread between seeds; docs/demo-rounds.md, twelfth round)
    cfg["answer_start_loss_weight"] = 3.0
    # One scale (the tower's last layer) instead of the released model's two: a step costs 17%
    # less, spent on 1300 stage-2 steps instead of 1100 in about the same time. Over 8 seeds
    # held-out generated gIoU 0.669 against 0.658 with two scales for 1100 steps, and 139 against
    # 126 of 259 no-target questions right (docs/demo-rounds.md, sixteenth round).
    cfg["vision_select_layers"] = [-1]
    # ReLU instead of GELU in the detail path: a stage-2 step 240 against 250 ms on one AVX2
    # thread (alternating in one process), held-out generated gIoU 0.665 against 0.662 over 8
    # seeds of 2,000 held-out questions each (docs/demo-rounds.md, nineteenth round)
    cfg["pixel_detail_act"] = "relu"
    return cfg


PRESETS = {
    "pixellm-7b": lambda: _released(4096, 32, 32, 11008),
    "pixellm-13b": lambda: _released(5120, 40, 40, 13824),
    "tiny": _tiny,
    "tiny-demo": _tiny_demo,
}

# Known to AutoConfig, so that transformers code that reads a checkpoint's config.json (e.g.
# AutoTokenizer.from_pretrained) builds a PixelLMConfig instead of warning that a `pixellm` config
# instantiates a model of type "".
AutoConfig.register(PixelLMConfig.model_type, PixelLMConfig, exist_ok=True)
