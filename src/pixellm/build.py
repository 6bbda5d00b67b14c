"""The one step from a configuration to a matching processor and model.

``pixellm.model`` knows sizes only (N tokens per scale, L scales, shared codebook, the LLM's base
vocabulary); ``pixellm.processing`` knows tokenizers. This module sits above both and joins them,
always in this order:

1. the processor is built for the config: its tokenizer (the tiny one when none is given), the
   config's image size, patch size, LLM image grid and ``num_codebook_tokens``;
2. the processor adds ``[SEG0]..[SEG{n-1}]``, ``<im_start>``, ``<im_end>`` to the tokenizer, in
   this order (tokens already present, as in a released tokenizer, keep their ids);
3. :func:`register_tokens` writes their ids into the config and grows its vocabulary to
   ``len(tokenizer)`` (``PixelLMConfig.set_token_ids``: a preset holds the base vocabulary);
4. the model is built from the config.

:func:`build_pixellm` runs all four; :func:`build_processor` runs steps 1-3 for callers that build
the model themselves (on the meta device, from a state dict, around a base LLM);
:func:`register_tokens` runs step 3 for a processor that exists already and
:func:`register_appended_tokens` where there is no tokenizer.

The tiny tokenizer of the ``tiny`` presets is :func:`tiny_tokenizer` (trained on the template,
built-in words and the synthetic set's sentences, which come from ``pixellm.data.synth``: this
module sits above ``pixellm.data``) and :func:`tiny_processor` wraps it. :func:`load_processor`
loads a saved processor folder after registering ``"pixellm"`` with ``AutoConfig`` (the
tokenizer loader reads the folder's ``config.json``; ``pixellm.processing`` does not import the
model). Training
(``pixellm.train.setup``), the released-checkpoint importer, ``pixellm.testing`` and the tests all
come through here. With LLaMA's tokenizer and the released sizes (N=3, L=2) the step gives the
released layout: ids 32000..32005 for the codebook, 32006 / 32007 for ``<im_start>`` /
``<im_end>``, vocabulary 32008.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pixellm.conventions import SYSTEM_PROMPT, added_token_strings
from pixellm.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    from pixellm.model.configuration_pixellm import PixelLMConfig
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM
    from pixellm.processing.processing_pixellm import PixelLMProcessor


def tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """The ``tiny`` preset's tokenizer: :func:`pixellm.processing.tokenizer.build_tiny_tokenizer`
    with the synthetic set's sentences (``pixellm.data.synth.tokenizer_corpus``) as extra corpus."""
    from pixellm.data.synth import tokenizer_corpus
    from pixellm.processing.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(vocab_size=vocab_size, extra_corpus=tokenizer_corpus())


def tiny_processor(
    image_size: int = 64,
    patch_size: int = 8,
    llm_image_grid: int = 4,
    num_codebook_tokens: int = 6,
    max_length: int = 512,
    vocab_size: int = 1024,
    system_prompt: str = SYSTEM_PROMPT,
) -> PixelLMProcessor:
    """:func:`tiny_tokenizer` + image processor for the ``tiny`` preset (pass the config's values).
    The added tokens are in the tokenizer; no config is involved (see :func:`build_processor`)."""
    from pixellm.processing.image_processing import PixelLMImageProcessor
    from pixellm.processing.processing_pixellm import PixelLMProcessor

    return PixelLMProcessor(
        tiny_tokenizer(vocab_size),
        PixelLMImageProcessor(image_size=image_size, patch_size=patch_size),
        num_codebook_tokens=num_codebook_tokens,
        num_image_tokens=llm_image_grid**2,
        llm_image_grid=llm_image_grid,
        max_length=max_length,
        system_prompt=system_prompt,
    )


def load_processor(directory: str | os.PathLike) -> PixelLMProcessor:
    """``PixelLMProcessor.from_pretrained(directory)`` with ``"pixellm"`` registered with
    ``AutoConfig`` first: the tokenizer loader reads the folder's ``config.json``, and an unknown
    ``model_type`` there makes transformers warn that a pixellm config instantiates a model of
    type ''."""
    import pixellm.model.configuration_pixellm  # noqa: F401  (registers "pixellm" with AutoConfig)
    from pixellm.processing.processing_pixellm import PixelLMProcessor

    return PixelLMProcessor.from_pretrained(directory)


def build_processor(
    config: PixelLMConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    max_length: int = 512,
    system_prompt: str = SYSTEM_PROMPT,
) -> PixelLMProcessor:
    """Steps 1-3: the processor for ``config`` (``tokenizer`` or the tiny one), with the added
    tokens registered in the tokenizer and their ids and the vocabulary size written into
    ``config`` (in place)."""
    from pixellm.processing.image_processing import PixelLMImageProcessor
    from pixellm.processing.processing_pixellm import PixelLMProcessor

    processor = PixelLMProcessor(
        tiny_tokenizer() if tokenizer is None else tokenizer,
        PixelLMImageProcessor(image_size=config.image_size, patch_size=config.vision_config.patch_size),
        num_codebook_tokens=config.num_codebook_tokens,
        num_image_tokens=config.num_image_tokens,
        llm_image_grid=config.llm_image_grid,
        max_length=max_length,
        image_token_index=config.image_token_index,
        system_prompt=system_prompt,
    )
    register_tokens(config, processor)
    return processor


def register_tokens(config: PixelLMConfig, processor: PixelLMProcessor) -> None:
    """Step 3: record ``processor``'s added-token ids and its tokenizer's size in ``config``.

    The processor must match the config (codebook tokens per group, LLM image tokens, image size);
    a mismatch is a one-line ``ConfigError``.
    """
    image = processor.image_processor
    pairs = {
        "num_codebook_tokens": (processor.num_codebook_tokens, config.num_codebook_tokens),
        "num_image_tokens": (processor.num_image_tokens, config.num_image_tokens),
        "image_token_index": (processor.image_token_index, config.image_token_index),
        "image_size": (image.image_size, config.image_size),
        "patch_size": (image.patch_size, config.vision_config.patch_size),
    }
    for name, (theirs, ours) in pairs.items():
        if theirs != ours:
            raise ConfigError(f"processor {name} is {theirs} but the model config needs {ours}")
    config.set_token_ids(
        processor.codebook_token_ids, processor.im_start_id, processor.im_end_id, vocab_size=len(processor.tokenizer)
    )


def register_appended_tokens(config: PixelLMConfig, base_vocab_size: int | None = None) -> None:
    """Step 3 without a tokenizer: the ids step 2 gives on a tokenizer of ``base_vocab_size``
    tokens (default: ``config``'s vocabulary) that lacks the added tokens. They follow it in the
    documented order and the vocabulary grows by them: the released layout (LLaMA's 32000 ->
    32000..32007, vocabulary 32008). For a released folder without tokenizer files and for
    counting a preset's FLOPs."""
    n = config.num_codebook_tokens
    base = config.text_config.vocab_size if base_vocab_size is None else int(base_vocab_size)
    if base < 0:
        raise ConfigError(f"a vocabulary of {config.text_config.vocab_size} cannot hold the {n + 2} added tokens")
    ids = list(range(base, base + len(added_token_strings(n))))  # codebook, <im_start>, <im_end>
    config.set_token_ids(ids[:n], ids[n], ids[n + 1], vocab_size=base + len(ids))


def build_pixellm(
    config: PixelLMConfig | str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    max_length: int = 512,
    system_prompt: str = SYSTEM_PROMPT,
    seed: int | None = None,
    **overrides: Any,
) -> tuple[PixelLMForCausalLM, PixelLMProcessor]:
    """All four steps: ``(model, processor)`` for a config or a preset name (+ ``overrides``).

    ``seed``: ``torch.manual_seed`` just before the model's random initialisation.
    """
    import torch

    from pixellm.model.configuration_pixellm import PixelLMConfig
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

    if isinstance(config, str):
        config = PixelLMConfig.from_preset(config, **overrides)
    elif overrides:
        raise ConfigError("overrides apply to a preset name, not to a built config")
    processor = build_processor(config, tokenizer, max_length=max_length, system_prompt=system_prompt)
    if seed is not None:
        torch.manual_seed(seed)
    return PixelLMForCausalLM(config), processor
