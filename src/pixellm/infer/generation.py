"""Generation with the KV cache that also returns, for every new token, the final (post-norm)
LLM hidden state that predicted it.

Why: the embedding of a codebook token is the hidden state *before* it (docs/architecture.md, "Model, as released"). The
released code regenerates the whole answer without a cache to get those states; here they come
out of the one cached ``generate`` call (``output_hidden_states=True``): step 0 is the prefill
(states ``B x T_prompt x H``, its last position predicted new token 0), step ``t > 0`` holds
``B x 1 x H`` for the position that predicted new token ``t``. In transformers 5 the last entry
of each step's tuple is the output of the final norm (checked against a teacher-forced forward
in ``tests/test_predictor.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pixellm.errors import ConfigError


@dataclass
class GenerationOptions:
    """Decoding settings. Greedy unless ``do_sample``; ``seed`` makes sampling repeatable."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GeneratedTokens:
    """``sequences``: Long ``B x n`` new tokens (padded after EOS); ``lengths[b]``: tokens of
    sample b up to and excluding its EOS; ``step_hidden``: ``B x n x H``, row t = the post-norm
    state that predicted token t."""

    sequences: torch.Tensor
    lengths: list[int]
    step_hidden: torch.Tensor


def generate_with_hidden(
    language_model: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    options: GenerationOptions,
    eos_token_id: int | None,
    pad_token_id: int,
) -> GeneratedTokens:
    """Run ``language_model.generate`` on left-padded ``inputs_embeds`` ``B x T x H``.

    ``attention_mask`` ``B x T`` (0 on padding and on masked image cells); ``generate`` derives
    position ids as ``cumsum(mask) - 1``, the rule the model uses in training.
    """
    options.validate()
    kwargs: dict = dict(do_sample=options.do_sample)
    if options.do_sample:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=0)
        if options.seed is not None:
            torch.manual_seed(options.seed)
    else:
        # Neutralise sampling fields a checkpoint's generation_config may carry (avoids warnings).
        kwargs.update(temperature=None, top_p=None, top_k=None)
    out = language_model.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        max_new_tokens=options.max_new_tokens,
        use_cache=True,
        output_hidden_states=True,
        return_dict_in_generate=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **kwargs,
    )
    seqs = out.sequences  # transformers 5: only the new tokens when given inputs_embeds
    steps = [out.hidden_states[0][-1][:, -1:]] + [h[-1][:, -1:] for h in out.hidden_states[1:]]
    step_hidden = torch.cat(steps, dim=1)[:, : seqs.shape[1]]
    lengths = []
    for row in seqs.tolist():
        n = len(row)
        if eos_token_id is not None and eos_token_id in row:
            n = row.index(eos_token_id)
        lengths.append(n)
    return GeneratedTokens(seqs, lengths, step_hidden)
