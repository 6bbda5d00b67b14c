"""Test helpers that ship with the package: small random-weight PixelLM models (for tests,
trying the commands without a trained model, benchmarks) and a one-call checkpoint save.

A random model's greedy answers are gibberish and almost never contain a complete codebook
group, so nothing would exercise the mask path. :func:`script_answer` edits the embeddings and
the LM head so that greedy decoding follows a given token chain (a first-order Markov chain:
each scripted token has one successor), e.g. ``" the chair [SEG] and this [SEG] and this ..."``.
Everything else (CLIP, attention, decoder) keeps its random weights, so hidden states and masks
still depend on the image and the context.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pixellm.errors import ConfigError


def random_pixellm(
    processor: Any,
    *,
    llm_hidden: int = 64,
    llm_layers: int = 2,
    llm_heads: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 3,
    decoder_dim: int = 32,
    decoder_mlp_dim: int = 64,
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """A random ``PixelLMForCausalLM`` matching ``processor`` (image size, LLM image grid; the
    added-token ids and the vocabulary are registered by ``pixellm.build.register_tokens``). Sizes
    are tiny by default (about a second to build on a CPU)."""
    from pixellm.build import register_tokens
    from pixellm.model.configuration_pixellm import PixelLMConfig
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

    image = processor.image_processor
    tok = processor.tokenizer
    kwargs: dict[str, Any] = dict(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
            num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_hidden // 16),
            patch_size=image.patch_size, image_size=image.image_size, projection_dim=vision_hidden,
        ),
        text_config=dict(
            model_type="llama", hidden_size=llm_hidden, intermediate_size=2 * llm_hidden,
            num_hidden_layers=llm_layers, num_attention_heads=llm_heads, num_key_value_heads=llm_heads,
            vocab_size=tok.vocab_size,  # the base vocabulary; register_tokens adds the added tokens
            max_position_embeddings=2048, tie_word_embeddings=False,
            pad_token_id=processor.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ),
        vision_select_layers=[-1, -2],
        image_size=image.image_size,
        llm_image_grid=processor.llm_image_grid,
        decoder_dim=decoder_dim,
        decoder_heads=4,
        decoder_mlp_dim=decoder_mlp_dim,
        vision_tower="",
    )
    kwargs.update(overrides)
    config = PixelLMConfig(**kwargs)
    register_tokens(config, processor)
    torch.manual_seed(seed)
    return PixelLMForCausalLM(config).eval()


def chain_transitions(sequence: Sequence[int], loop_to: int | None = None) -> dict[int, int]:
    """``{token: next token}`` for consecutive pairs of ``sequence``; the last token goes to
    ``sequence[loop_to]`` when given. Raises ``ConfigError`` if a token would need two successors."""
    seq = [int(t) for t in sequence]
    pairs = list(zip(seq, seq[1:]))
    if loop_to is not None:
        pairs.append((seq[-1], seq[loop_to]))
    out: dict[int, int] = {}
    for a, b in pairs:
        if out.get(a, b) != b:
            raise ConfigError(f"token {a} would need two successors ({out[a]} and {b}); not a first-order chain")
        out[a] = b
    return out


@torch.no_grad()
def script_answer(model: Any, transitions: dict[int, int], strength: float = 1.0, seed: int = 0) -> None:
    """Make greedy decoding follow ``transitions`` (in place).

    Each successor ``b`` gets a random unit direction ``u_b``: the LM-head row of ``b`` becomes
    ``u_b`` and the input embedding of every ``a`` with ``a -> b`` becomes ``strength * u_b``, so
    the post-norm state after ``a`` points at ``u_b`` and ``b`` wins the argmax.
    """
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    if emb.data_ptr() == head.data_ptr():
        raise ConfigError("script_answer needs untied input/output embeddings")
    g = torch.Generator().manual_seed(seed)
    dirs: dict[int, torch.Tensor] = {}
    for b in sorted(set(transitions.values())):
        u = torch.randn(emb.shape[1], generator=g)
        dirs[b] = u / u.norm()
    for a, b in transitions.items():
        emb[a] = (strength * dirs[b]).to(emb.dtype)
        head[b] = dirs[b].to(head.dtype)


def scripted_pixellm(
    processor: Any, answer: str, loop_from: str | None = None, strength: float = 1.0, **kwargs: Any
) -> Any:
    """A random model whose greedy answer to any question is ``answer`` (``[SEG]`` markers allowed),
    repeating from the first occurrence of ``loop_from`` (a suffix of ``answer``) until the token
    limit, or ending with EOS when ``loop_from`` is None. ``strength``: embedding norm of the
    scripted tokens (raise it for wider / deeper models, whose random layers add more)."""
    model = random_pixellm(processor, **kwargs)
    script_text(model, processor, answer, loop_from, strength=strength, seed=kwargs.get("seed", 0))
    return model


def script_text(
    model: Any, processor: Any, answer: str, loop_from: str | None = None, strength: float = 1.0, seed: int = 0
) -> None:
    """:func:`script_answer` for text: make greedy decoding of ``model`` (any model, trained or
    not) answer ``answer`` after the prompt, as :func:`scripted_pixellm` describes (in place)."""
    from pixellm.conventions import expand_seg

    tok = processor.tokenizer
    # the prompt ends with "ASSISTANT:"; its last token starts the chain
    start = tok(" ASSISTANT:", add_special_tokens=False).input_ids[-1]
    n = len(processor.codebook_token_ids)
    ids = tok(expand_seg(answer, n), add_special_tokens=False).input_ids
    seq = [start, *ids]
    loop_to = None
    if loop_from is None:
        seq.append(tok.eos_token_id)
    else:
        tail = tok(expand_seg(loop_from, n), add_special_tokens=False).input_ids
        if seq[-len(tail):] != tail:
            raise ConfigError(f"loop_from {loop_from!r} must tokenise as a suffix of the answer")
        loop_to = len(seq) - len(tail)
    script_answer(model, chain_transitions(seq, loop_to), strength=strength, seed=seed)


def save_random_predictor(directory: str | os.PathLike, answer: str | None = None, **kwargs: Any) -> None:
    """Save a tiny random (optionally scripted) model with the tiny processor to ``directory``
    (loadable with ``Predictor.from_pretrained``)."""
    from pixellm.build import tiny_processor

    processor = tiny_processor()
    model = scripted_pixellm(processor, answer, **kwargs) if answer else random_pixellm(processor, **kwargs)
    model.save_pretrained(str(directory))
    processor.save_pretrained(directory)


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    keep: int | None = None,
    before_finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Single-process checkpoint save in one call (the trainer runs these steps across processes)."""
    from pixellm.train import checkpoint as ckpt

    tmp = ckpt.prepare_tmp_dir(output_dir, step)
    ckpt.write_rng_state(tmp, 0)
    ckpt.write_main_state(tmp, trainable, optimizer_state, trainer_state)
    if before_finalize is not None:
        before_finalize(tmp)
    return ckpt.finalize_checkpoint(output_dir, step, keep)
