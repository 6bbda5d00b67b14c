"""Decoding settings of the ``Predictor`` (``PixelLMForCausalLM.generate`` does the work)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``generate`` (transformers' names); ``seed`` is not one of them:
        the caller seeds torch just before generating."""
        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
        else:
            # Neutralise sampling fields a checkpoint's generation_config may carry (avoids warnings).
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs
