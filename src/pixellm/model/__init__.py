"""PixelLM model: configuration, modules and ``PixelLMForCausalLM``."""
