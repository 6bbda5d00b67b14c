"""Inference benchmark: PixelLM answer-with-masks against the plain-LLM floor.

Model: mid-size random PixelLM (LLaMA 8 layers x hidden 512, CLIP 6 layers x 384 at 224 px with
patch 14 -> 256 image tokens, released-size pixel decoder), scripted so that greedy decoding
answers with K targets (``pixellm.testing``).

Measured (``--repeats`` interleaved runs after one warm-up; medians, and minima):
- ``pixellm``: ``Predictor(image, question)`` end to end (preprocessing, one vision pass,
  cached generation collecting codebook states, pixel decoder for K masks, numpy masks).
- ``floor``: one CLIP forward + ``transformers`` ``generate`` of the same LLM on a prompt of the
  same length, producing the same number of new tokens (``min_new_tokens = max_new_tokens``).
- ratio = pixellm / floor, the median of interleaved pairs (target: overhead <= 15%).
- released-size pixel decoder (256-d, 2 scales, 32x32 features, 448 px input) for one target:
  time and memory (fp32 parameters; peak bytes of live tensors created during the call).

    python benchmarks/bench_infer.py [--targets 4] [--repeats 7] [--threads 1]

Writes ``benchmarks/results/infer.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import weakref
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pixellm.infer.generation import GenerationOptions
from pixellm.infer.predictor import Predictor
from pixellm.testing import random_pixellm, scripted_pixellm

ANSWER = " you can sit on the big chair [SEG] and put a cup near this small table [SEG]"
LOOP = " and put a cup near this small table [SEG]"
RESULTS = Path(__file__).parent / "results" / "infer.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _median_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    return statistics.median(_time_once(fn, device) for _ in range(repeats))


def _paired(fn_a, fn_b, repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Interleaved timings (a, b, a, b, ...): on a shared machine both see the same load, and
    the per-pair ratio is steadier than a ratio of separate medians."""
    fn_a(), fn_b()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a.append(_time_once(fn_a, device))
        b.append(_time_once(fn_b, device))
    return a, b


def mid_size_processor():
    from pixellm.build import tiny_tokenizer
    from pixellm.processing.image_processing import PixelLMImageProcessor
    from pixellm.processing.processing_pixellm import PixelLMProcessor

    return PixelLMProcessor(tiny_tokenizer(), PixelLMImageProcessor(image_size=224, patch_size=14),
                            num_image_tokens=256, llm_image_grid=16, max_length=1024)


def tokens_for_targets(processor, k: int) -> int:
    """New tokens that end right after the k-th codebook group of the scripted answer."""
    from pixellm.conventions import expand_seg

    tok, n = processor.tokenizer, len(processor.codebook_token_ids)
    first = len(tok(expand_seg(ANSWER.replace(LOOP, ""), n), add_special_tokens=False).input_ids)
    loop = len(tok(expand_seg(LOOP, n), add_special_tokens=False).input_ids)
    return first + (k - 1) * loop if k >= 1 else first - n


def bench_pipeline(args: argparse.Namespace, device: torch.device) -> dict:
    processor = mid_size_processor()
    sizes = dict(llm_hidden=512, llm_layers=8, llm_heads=8, vision_hidden=384, vision_layers=6,
                 decoder_dim=256, decoder_mlp_dim=2048)
    # wider/deeper random layers than the test models: a stronger script keeps the answer on track
    model = scripted_pixellm(processor, ANSWER, loop_from=LOOP, strength=4.0, **sizes).to(device)
    n_new = tokens_for_targets(processor, args.targets)
    predictor = Predictor(model, processor, GenerationOptions(max_new_tokens=n_new))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    question = "Where could I sit down and put my cup?"

    result = predictor(image, question)
    assert result.num_masks == args.targets, (result.answer, result.num_masks)

    # Floor: one CLIP forward + plain generate of the same LLM, same prompt length and output length.
    batch = processor([image], [predictor.prepare_question(question)])
    ids = batch["input_ids"].clone()
    ids[ids == processor.image_token_index] = processor.tokenizer.bos_token_id  # any real token
    ids, att = ids.to(device), torch.ones_like(ids).to(device)
    pixels = batch["pixel_values"].to(device)
    llm = model.language_model

    @torch.inference_mode()
    def floor():
        model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        out = llm.generate(input_ids=ids, attention_mask=att, max_new_tokens=n_new, min_new_tokens=n_new,
                           do_sample=False, use_cache=True, pad_token_id=processor.pad_token_id,
                           temperature=None, top_p=None, top_k=None)
        assert out.shape[1] - ids.shape[1] == n_new

    times_pixellm, times_floor = _paired(lambda: predictor(image, question), floor, args.repeats, device)
    ratios = [a / b for a, b in zip(times_pixellm, times_floor)]
    t_pixellm, t_floor = statistics.median(times_pixellm), statistics.median(times_floor)

    # Where PixelLM's extra time goes: vision pass (CLIP + projectors + neck) and decoder.
    with torch.inference_mode():
        pv, rs, os_ = pixels, batch["resized_sizes"].to(device), batch["original_sizes"].to(device)
        t_encode = _median_time(lambda: model.encode_images(pv, rs, os_), args.repeats, device)
        t_clip = _median_time(lambda: model.vision_tower(pixel_values=pv, output_hidden_states=True),
                              args.repeats, device)
        feats = model.encode_images(pv, rs, os_)
        seg = torch.randn(args.targets, model.config.num_scales, model.config.decoder_dim, device=device)
        idx = torch.zeros(args.targets, dtype=torch.long, device=device)
        t_decode = _median_time(lambda: model.predict_masks(feats, seg, idx), args.repeats, device)
    return {
        "model": {**sizes, "vision_patch": 14, "image_size": 224, "image_tokens": 256,
                  "prompt_tokens": int(ids.shape[1]), "new_tokens": n_new, "targets": args.targets,
                  "image": [480, 640]},
        "pixellm_s": round(t_pixellm, 4),
        "floor_s": round(t_floor, 4),
        "pixellm_min_s": round(min(times_pixellm), 4),
        "floor_min_s": round(min(times_floor), 4),
        "ratio": round(statistics.median(ratios), 4),  # median of paired ratios
        "ratio_of_mins": round(min(times_pixellm) / min(times_floor), 4),
        "overhead_pct": round(100 * (statistics.median(ratios) - 1), 1),
        "repeats": args.repeats,
        "target_overhead_pct": 15.0,
        "parts_s": {"clip_forward": round(t_clip, 4), "encode_images": round(t_encode, 4),
                    f"decode_{args.targets}_masks": round(t_decode, 4)},
        "answer": result.answer,
    }


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensors created inside the block and still alive (CPU-friendly: counts
    each output storage once and subtracts it when the storage is freed)."""

    def __enter__(self):
        self.live = self.peak = 0
        self._seen: set[int] = set()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen:
                    self._seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes


def bench_released_decoder(args: argparse.Namespace, device: torch.device) -> dict:
    """Released-size decoder path (pixel decoder + mask fusion + resize to the original size)
    for one target, on 2-scale 256 x 32 x 32 features of a 448 px input."""
    from pixellm.model.modeling_pixellm import ImageFeatures

    # Tiny LLM/CLIP (not timed); decoder, neck and codebook at released sizes.
    model = random_pixellm(mid_size_processor(), decoder_dim=256, decoder_mlp_dim=2048,
                           image_size=448, vision_config=dict(
                               model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=448,
                               projection_dim=32)).to(device)
    cfg = model.config
    n_params = sum(p.numel() for p in model.mask_decoder.parameters())
    grid = cfg.image_size // 14
    feats = ImageFeatures(
        llm_tokens=torch.zeros(1, 1, device=device),
        decoder=torch.randn(1, cfg.num_scales, cfg.decoder_dim, grid, grid, device=device),
        detail=None,
        resized_sizes=torch.tensor([[336, 448]], device=device),
        original_sizes=torch.tensor([[480, 640]], device=device),
    )
    seg = torch.randn(1, cfg.num_scales, cfg.decoder_dim, device=device)
    idx = torch.zeros(1, dtype=torch.long, device=device)
    with torch.inference_mode():
        run = lambda: model.predict_masks(feats, seg, idx)  # noqa: E731
        t = _median_time(run, args.repeats, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            run()
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            with LiveTensorBytes() as tracker:
                run()
            peak = tracker.peak / 2**20
    return {
        "mask_decoder_params": n_params,
        "param_mb_fp32": round(n_params * 4 / 2**20, 1),
        "time_s": round(t, 4),
        "peak_activation_mb": round(peak, 1),
        "features": [cfg.num_scales, cfg.decoder_dim, grid, grid],
        "output": [480, 640],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=4, help="K masks in the answer")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipeline = bench_pipeline(args, device)
    decoder = bench_released_decoder(args, device)
    report = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "pipeline": pipeline,
        "released_decoder_one_target": decoder,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    p = pipeline
    print(f"pixellm {p['pixellm_s']:.3f}s vs floor {p['floor_s']:.3f}s (medians) -> paired ratio {p['ratio']:.3f} "
          f"(overhead {p['overhead_pct']:+.1f}%, target <= 15%); parts {p['parts_s']}")
    print(f"released-size decoder, one target: {decoder['time_s'] * 1000:.1f} ms, "
          f"{decoder['param_mb_fp32']} MB params + {decoder['peak_activation_mb']} MB peak activations")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
