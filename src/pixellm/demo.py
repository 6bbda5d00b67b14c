"""``pixellm demo``: synthetic data -> train the tiny preset on the CPU -> MUSE evaluation.

1. ``pixellm.data.synth`` writes a train split and a disjoint held-out split (no image shared).
2. The ``tiny`` preset trains from scratch (CLIP frozen at its random initialisation, everything
   else trainable: a frozen *random* LLM could not learn the language side) with the recipe of
   :func:`demo_config` (also written out as ``configs/tiny.yaml``).
3. The ``Predictor`` answers every held-out question (greedy generation); masks also come
   teacher-forced from the GT answers. Both go through the MUSE protocol with the oracle judge.
4. ``DIR/metrics.json``, ``DIR/report.md``, ``DIR/examples/*.png``, ``DIR/checkpoint/`` (model +
   processor, loadable by ``Predictor.from_pretrained``). The last line printed is
   ``gIoU=<x> cIoU=<y>`` (held-out, generated answers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pixellm.conventions import SEG_MARKER
from pixellm.data.sample import SEG_PLACEHOLDER
from pixellm.model.vision import FrozenVisionCache
from pixellm.train.config import DataSource, LoraSettings, OptimSettings, TrainConfig
from pixellm.train.vision_pretrain import VisionPretrainConfig

# Demo sizes: training questions and held-out questions of the synthetic set. One model's
# score moved by 0.035 (sd) between sets of 200 held-out questions; the mean of 1000 is good to
# about +-0.013 (docs/demo-rounds.md, nineteenth round). The periodic validation during training
# reads the first 200 only.
TRAIN_QUESTIONS = 8000
VAL_QUESTIONS = 1000
VALIDATION_QUESTIONS = 200
DEMO_STEPS = 1400
NUM_EXAMPLES = 8
DEMO_VISION = VisionPretrainConfig()  # stage 1: its defaults are the demo's recipe


def demo_config(out_dir: str | Path, steps: int = DEMO_STEPS, seed: int = 0) -> TrainConfig:
    """The demo's stage-2 recipe (mirrored by ``configs/tiny.yaml``; a test keeps them in sync).

    Differences from the 7B recipe, all for a from-scratch model on 2 CPU cores: the
    ``tiny-demo`` preset, no system prompt (it was a fifth of every sequence) and no instruction
    suffix after the questions (7 of ~60 tokens), lr 2e-3 (1e-3 for the
    LLM and the image-token projector) held until the last 20% of the steps, Muon for the LLM's
    hidden matrices, batch 16
    in one step (no accumulation; more small updates learned more per FLOP than fewer large
    ones), no LoRA, LLM fully trainable, CLIP frozen (after stage 1, ``vision_weights``).
    """
    out = Path(out_dir)
    data = out / "data"
    return TrainConfig(
        preset="tiny-demo",
        vision_weights=str(out / "vision_tower"),
        trainable="all_but_vision",
        lora=LoraSettings(enabled=False),
        data=[DataSource(name="synth", kind="synth", path=str(data / "train.json"), rate=1.0)],
        val_data=str(data / "val.json"),
        val_samples=VALIDATION_QUESTIONS,
        max_length=192,
        system_prompt="",
        # questions without "Please respond with segmentation mask.": 7 tokens of every ~60 that
        # carry nothing. A step 6% shorter (238 against 254 ms, one AVX2 thread) and over 8 seeds
        # held-out gIoU 0.669 against 0.665 (docs/demo-rounds.md, twentieth round)
        instruction=False,
        # the frozen stage-1 tower's features of the 4,000 training images (~130 MiB): each image
        # comes back ~5.6 times in 1400 x 16 questions
        vision_cache_mb=512,
        # the 8,000 encoded questions (~250 MiB): each comes back ~2.8 times in 1400 x 16, and
        # decoding + tokenizing was ~10% of a step (docs/demo-rounds.md, seventeenth round)
        sample_cache_mb=512,
        # the LLM and its image-token projector at half the rate: over 5 seeds the answers that need
        # a named object looked up (absent, same colour / shape) gained, and no-target questions
        # answered right went from 19 to 66 of 161 (docs/demo-rounds.md)
        # Muon for the LLM's attention and MLP matrices (AdamW for the rest): over 4 seeds, paired,
        # +0.03 held-out gIoU for ~3% more step time (docs/demo-rounds.md, eighth round)
        # the peak rate held until the last 20% of the steps: against linear decay, more no-target
        # questions right (tenth round: 95 against 82 of 198 with the last 30%); against the last
        # 30%, over 6 seeds +0.011 gIoU (within a run's spread), no-target the same (twelfth round)
        optim=OptimSettings(lr=2e-3, betas=[0.9, 0.95], weight_decay=0.0, warmup_steps=50, decay_fraction=0.2,
                            grad_clip=1.0, lr_scale={"language_model": 0.5, "mm_projector": 0.5}, name="muon"),
        steps=steps,
        batch_size=16,
        effective_batch=16,
        precision="auto",
        seed=seed,
        output_dir=str(out / "run"),
        save_every=max(1, steps // 2),
        keep_checkpoints=1,
        # halfway and at the end (a pass over 200 held-out questions costs ~2 s on one AVX2 thread)
        val_every=max(1, steps // 2),
        log_every=10,
    )


def synth_is_cached(folder: Path, splits: dict[str, int], seed: int) -> bool:
    """True when ``folder`` holds a complete synthetic set made with these splits, this seed and
    the default scene config (``info.json`` is written last)."""
    from pixellm.data.synth import SynthConfig

    try:
        info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    sizes = {k: v.get("questions") for k, v in info.get("splits", {}).items()}
    default = json.loads(json.dumps(dataclasses.asdict(SynthConfig())))
    return (info.get("seed") == seed and sizes == splits and info.get("config") == default
            and all((folder / f"{k}.json").is_file() for k in splits))


def vision_stage(cfg: TrainConfig, train_json: Path, folder: Path, recipe: VisionPretrainConfig,
                 progress: bool = True, probe_images: int = 1000, probe_random_tower: bool = False,
                 feature_cache: FrozenVisionCache | None = None) -> dict[str, Any]:
    """Stage 1 (``pixellm.train.vision_pretrain``) on the training split, cached in ``folder``:
    a rerun with the same data, model and recipe reuses the saved tower. Returns its summary,
    with the linear-probe accuracy of the largest object's shape on the LLM's grid features of
    the trained tower (fit on the first images, scored on the last ``probe_images``), and of the
    random tower it started from with ``probe_random_tower`` (one more pass over the images).

    ``feature_cache``: receives the trained tower's features of the training images, which the
    probe computes anyway, for stage 2 to read instead of running the tower again (its
    ``tower_digest`` is set; left empty when the stage is reused from ``folder``)."""
    import hashlib

    from pixellm.conventions import grid_valid_mask
    from pixellm.model.configuration_pixellm import PixelLMConfig
    from pixellm.model.vision import tower_digest
    from pixellm.train.setup import build_model
    from pixellm.train.vision_pretrain import (
        cached_result,
        dense_set_from_muse,
        pretrain_vision_tower,
        save_pretrained_tower,
        tower_features,
    )

    config = PixelLMConfig.from_preset(cfg.preset, **cfg.model_overrides)  # what build_model builds
    fingerprint = {
        "train_sha1": hashlib.sha1(train_json.read_bytes()).hexdigest(),
        "vision_config": config.vision_config.to_dict(),
        "select_layers": list(config.vision_select_layers),
        "model_seed": cfg.seed,
        "recipe": dataclasses.asdict(recipe),
    }
    cached = cached_result(folder, fingerprint)
    if cached is not None:
        print(f"vision pre-training: reusing {folder}")
        return {**cached["summary"], "reused": True}
    # the random (seeded) tower stage 2 would otherwise start from
    model, processor = build_model(dataclasses.replace(cfg, vision_weights=None))
    dense = dense_set_from_muse(train_json, processor.image_processor)
    n_fit = len(dense) - min(probe_images, len(dense) // 4)
    fit, held = _split_dense(dense, n_fit)
    shapes = largest_object_shape(train_json)  # None unless the synthetic set's shape names
    before = shape_probe(model, dense, shapes, n_fit) if shapes and probe_random_tower else None
    result = pretrain_vision_tower(
        model.vision_tower, fit, model.config.vision_select_layers, recipe,
        model.config.pos_interpolation, held_out=held, progress=progress,
    )
    after = None
    if shapes or feature_cache is not None:
        features = tower_features(model, dense.pixel_values, dense.resized_sizes)
        if shapes:
            after = shape_probe(model, dense, shapes, n_fit, features[0])
        if feature_cache is not None:
            valid = grid_valid_mask(dense.resized_sizes.long(), config.image_size, config.vision_grid)
            feature_cache.tower_digest = tower_digest(model.vision_tower)
            feature_cache.add(dense.pixel_values, valid, features)
        del features
    summary = {
        "seconds": round(result.seconds, 1),
        "final_loss": round(sum(result.losses[-20:]) / len(result.losses[-20:]), 4),
        "held_out_pixel_accuracy": result.pixel_accuracy,
        "shape_probe": {"random_tower": before, "pretrained_tower": after,
                        "majority": _majority(shapes[n_fit:])} if shapes else None,
        "config": result.config,
    }
    save_pretrained_tower(model.vision_tower, folder, result, fingerprint, summary)
    probe = f", largest-object shape probe {_probe_text(summary['shape_probe'])}" if shapes else ""
    print(f"vision pre-training: {result.seconds:.0f} s, held-out pixel accuracy {result.pixel_accuracy:.3f}{probe}")
    return summary


def _split_dense(dense, n: int):
    return dense.subset(slice(0, n)), dense.subset(slice(n, None))


def largest_object_shape(path: Path) -> list[int] | None:
    """Per image, the shape index (``SHAPES``) of its largest visible object; None unless every
    image has objects named "<colour> <shape>" (the synthetic set)."""
    from pixellm.data.synth import SHAPES

    records = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for r in records:
        if not r.get("ann_list"):
            return None
        name = str(max(r["ann_list"], key=lambda a: a.get("area", 0)).get("category_name", "")).split()
        if not name or name[-1] not in SHAPES:
            return None
        out.append(SHAPES.index(name[-1]))
    return out


def shape_probe(model, dense, shapes: list[int], n_fit: int, features=None) -> float:
    """Held-out accuracy of a linear probe for the largest object's shape on the LLM's grid
    features of ``model``'s tower (``features``: that tower's first selected layer over
    ``dense``, when already computed)."""
    import torch

    from pixellm.train.vision_pretrain import linear_probe_accuracy, llm_grid_features

    x = llm_grid_features(model, dense.pixel_values, dense.resized_sizes, features)
    y = torch.tensor(shapes)
    return round(linear_probe_accuracy(x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]), 4)


def _probe_text(probe: dict[str, Any]) -> str:
    after = f"{probe['pretrained_tower']:.2f} (majority class {probe['majority']:.2f}"
    if probe.get("random_tower") is not None:
        return f"{probe['random_tower']:.2f} -> {after})"
    return after + ")"


def _majority(values: list[int]) -> float:
    return round(max(values.count(v) for v in set(values)) / len(values), 4)


def _question_kinds(records: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    return {
        (i, j): str(kind)
        for i, rec in enumerate(records)
        for j, kind in enumerate(rec.get("question_kinds", ["unknown"] * len(rec["questions"])))
    }


def _reference_answers(records: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    """The synthetic set's answer text per (image, question), with ``[SEG]`` for the placeholder."""
    return {
        (i, j): _reference_answer(rec, j)
        for i, rec in enumerate(records)
        for j in range(len(rec.get("text_answers", [])))
    }


def _reference_answer(record: dict[str, Any], question: int) -> str:
    """Question ``question``'s reference answer text with ``[SEG]`` markers ("" when the record has none)."""
    texts = record.get("text_answers")
    return _seg_text(str(texts[question])) if texts else ""


def _seg_text(answer: str) -> str:
    return " ".join(answer.replace(SEG_PLACEHOLDER, SEG_MARKER).split())


def no_target_accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Questions whose ground truth has no target, and how many the model answered with none."""
    empty = [r for r in rows if r["gt"] == 0]
    right = sum(1 for r in empty if r["pred"] == 0)
    return {"questions": len(empty), "answered_right": right,
            "accuracy": right / len(empty) if empty else None}


def per_kind(metrics: dict[str, Any], kinds: dict[tuple[int, int], str],
             answers: dict[tuple[int, int], str] | None = None) -> dict[str, Any]:
    """gIoU / cIoU / samples per question kind and mode, from the protocol's per-sample rows.
    With ``answers`` (the reference answer texts), also the share of answers that are word for
    word the reference (``exact_answer``): it tells a wrong name (language) from a wrong mask."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for mode in ("generated", "teacher_forced"):
        rows = metrics.get(mode, {}).pop("per_sample", [])
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            groups[kinds.get((r["image"], r["question"]), "unknown")].append(r)
        for kind, rs in sorted(groups.items()):
            union = sum(r["union"] for r in rs)
            out[kind][mode] = {
                "gIoU": float(np.mean([r["iou"] for r in rs])),
                "cIoU": sum(r["intersection"] for r in rs) / union if union else 1.0,
                "samples": len(rs),
                "exact_target_count": float(np.mean([r["gt"] == r["pred"] for r in rs])),
            }
            known = [r for r in rs if answers and (r["image"], r["question"]) in answers]
            if known:
                out[kind][mode]["exact_answer"] = float(np.mean(
                    [_seg_text(r["answer"]) == answers[(r["image"], r["question"])] for r in known]))
    return dict(out)


def write_examples(records: list[dict[str, Any]], root: Path, preds: list[dict[str, Any]],
                   folder: Path, count: int = NUM_EXAMPLES, scale: int = 4) -> list[str]:
    """Pictures of the first ``count`` generated answers: the prediction (left) next to the
    ground truth (right), each upscaled ``scale`` x (nearest) with its target names below."""
    from PIL import Image

    from pixellm.data.masks import decode_rle
    from pixellm.data.muse import decode_targets
    from pixellm.infer.overlay import render_overlay, target_names

    def overlay(image: Image.Image, masks: np.ndarray, answer: str) -> Image.Image:
        big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        big_masks = masks.repeat(scale, axis=1).repeat(scale, axis=2)
        return render_overlay(big, big_masks, target_names(answer) if len(masks) else None)

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for p in preds[:count]:
        rec = records[p["image"]]
        image = Image.open(root / rec["file_name"]).convert("RGB")
        h, w = image.height, image.width
        masks = np.stack([decode_rle(m) for m in p["masks"]]) if p["masks"] else np.zeros((0, h, w), bool)
        gt_masks = decode_targets(rec["answers"][p["question"]], h, w)
        gt_answer = _reference_answer(rec, p["question"])
        left, right = overlay(image, masks, p["answer"]), overlay(image, gt_masks, gt_answer)
        gap = 8
        picture = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
        picture.paste(left, (0, 0))
        picture.paste(right, (left.width + gap, 0))
        name = f"{p['image']:04d}_q{p['question']}.png"
        picture.save(folder / name)
        names.append(name)
    return names


def stage1_text(metrics: dict[str, Any]) -> str:
    v = metrics.get("vision_pretraining")
    if not v:
        return ""
    probe = v.get("shape_probe")
    shape = f", largest-object shape probe {_probe_text(probe)}" if probe else ""
    acc = v.get("held_out_pixel_accuracy")
    return (f"stage 1 pre-trained the vision tower for {v['config']['steps']} steps ({v['seconds']:.0f} s; "
            f"held-out pixel accuracy {acc or 0:.2f}{shape}), ")


def write_report(path: Path, metrics: dict[str, Any], records: list[dict[str, Any]], preds: list[dict[str, Any]],
                 examples: list[str]) -> None:
    gen, tf = metrics.get("generated", {}), metrics.get("teacher_forced", {})
    nt = metrics.get("no_target", {})
    tr = metrics["training"]
    lines = [
        "# PixelLM demo report",
        "",
        f"`{tr['config']['preset']}` preset trained from scratch on the synthetic set: {stage1_text(metrics)}"
        f"then {tr['steps']} steps of the rest of the model with that tower frozen "
        f"({tr['samples']} samples, {tr['seconds']:.0f} s, {tr['samples_per_second']:.1f} samples/s, "
        f"{tr.get('precision', {}).get('chosen', '?')}), evaluated on {metrics['samples']} held-out questions "
        f"(disjoint images) with the MUSE protocol, judge `{metrics['judge']}`.",
        "",
        "| answers | gIoU | cIoU |",
        "|---|---|---|",
        f"| generated | {gen.get('gIoU', 0):.4f} | {gen.get('cIoU', 0):.4f} |",
        f"| teacher-forced | {tf.get('gIoU', 0):.4f} | {tf.get('cIoU', 0):.4f} |",
        "",
        f"No-target questions answered with no target: {nt.get('answered_right', 0)} of {nt.get('questions', 0)}.",
        "",
        "## Per question kind (generated / teacher-forced gIoU)",
        "",
        "Right target count and answer word for word: generated answers. A right count with a wrong",
        "answer names the wrong objects; teacher-forced masks show what the masks alone would score.",
        "",
        "| kind | questions | generated gIoU | teacher-forced gIoU | right target count | answer word for word |",
        "|---|---|---|---|---|---|",
    ]
    for kind, m in metrics["per_kind"].items():
        g, t = m.get("generated", {}), m.get("teacher_forced", {})
        exact = f"{g['exact_answer']:.2f}" if "exact_answer" in g else "-"
        lines.append(f"| {kind} | {g.get('samples', 0)} | {g.get('gIoU', 0):.3f} | {t.get('gIoU', 0):.3f} | "
                     f"{g.get('exact_target_count', 0):.2f} | {exact} |")
    lines += ["", "## Examples (prediction left, ground truth right)", ""]
    for name, p in zip(examples, preds):
        q = records[p["image"]]["questions"][p["question"]]
        gt = _reference_answer(records[p["image"]], p["question"])
        lines += [f"![{name}](examples/{name})", "", f"- Q: {q}", f"- model: {p['answer']}",
                  f"- ground truth: {gt}", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_demo(
    out_dir: str | Path = "demo_out",
    steps: int | None = None,
    seed: int = 0,
    train_questions: int = TRAIN_QUESTIONS,
    val_questions: int = VAL_QUESTIONS,
    progress: bool = True,
    config: TrainConfig | None = None,
    vision: VisionPretrainConfig | None = DEMO_VISION,
) -> dict[str, Any]:
    """Run the whole demo; returns the metrics written to ``out_dir/metrics.json``."""
    import torch

    from pixellm.data.muse import load_muse
    from pixellm.data.synth import write_synth
    from pixellm.eval.muse_protocol import evaluate_muse
    from pixellm.infer.predictor import Predictor
    from pixellm.infer.split_inference import run_inference
    from pixellm.train.trainer import flush_denormals, train

    flush_denormals()  # before any torch op, so that every worker thread inherits it
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    data = out / "data"
    splits = {"train": train_questions, "val": val_questions}
    if not synth_is_cached(data, splits, seed):
        write_synth(data, splits, seed=seed, progress=progress)
    stages["data"] = time.perf_counter() - t0
    cfg = config or demo_config(out, DEMO_STEPS if steps is None else steps, seed)
    cfg.progress = progress
    cfg.val_samples = min(cfg.val_samples, val_questions)
    t1 = time.perf_counter()
    stage1 = None
    # stage 1's trained tower over the training images, kept for stage 2 (its first pass ran the
    # tower on each of them again: docs/demo-rounds.md, eighteenth round); read in fp32 runs only,
    # as a bf16-autocast run keys its features apart
    features = FrozenVisionCache(cfg.vision_cache_mb * 2**20) if cfg.vision_cache_mb else None
    if vision is not None and cfg.vision_weights:
        recipe = dataclasses.replace(vision, seed=seed)
        stage1 = vision_stage(cfg, data / "train.json", Path(cfg.vision_weights), recipe, progress=progress,
                              feature_cache=features)
    stages["vision_pretraining"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    result = train(cfg, export_dir=out / "checkpoint", vision_cache=features)
    del features
    stages["training"] = time.perf_counter() - t1
    t1 = time.perf_counter()

    predictor = Predictor(result.model, result.processor)
    records = load_muse(data / "val.json")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        # one PRED.jsonl for both: run_inference keys lines by (image, question, teacher_forced)
        pred_path = out / "predictions.jsonl"
        pred_path.unlink(missing_ok=True)  # a new model: never resume an earlier demo's answers
        for forced_flag in (False, True):
            run_inference(predictor, records, pred_path, image_root=data, batch_size=32,
                          teacher_forced=forced_flag, progress=progress)
    lines = [json.loads(line) for line in pred_path.read_text(encoding="utf-8").splitlines()]
    generated = [p for p in lines if not p.get("teacher_forced")]
    metrics = evaluate_muse(records, lines, judge="oracle", split="val", details=True)
    metrics["no_target"] = no_target_accuracy(metrics.get("generated", {}).get("per_sample", []))
    metrics["per_kind"] = per_kind(metrics, _question_kinds(records), _reference_answers(records))
    last = result.history[-1] if result.history else {}
    metrics["training"] = {
        "steps": result.step,
        "samples": result.samples,
        "seconds": round(result.seconds, 1),
        "samples_per_second": round(result.samples_per_second, 2),
        "precision": result.precision,
        "final_losses": {k: round(v, 4) for k, v in last.items() if k.endswith("loss")},
        "validation": result.validation,
        "skipped": result.skipped,
        "vision_cache": result.vision_cache,
        "sample_cache": result.sample_cache,
        "config": cfg.to_dict(),
    }
    metrics["data"] = {"train_questions": train_questions, "val_questions": val_questions, "seed": seed}
    if stage1 is not None:
        metrics["vision_pretraining"] = stage1
    examples = write_examples(records, data, generated, out / "examples")
    stages["inference_and_evaluation"] = time.perf_counter() - t1
    metrics["seconds_per_stage"] = {k: round(v, 1) for k, v in stages.items()}
    # timings depend on the CPU class: record which kernels PyTorch dispatched to
    metrics["machine"] = {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    metrics["seconds_total"] = round(time.perf_counter() - t0, 1)
    with open(out / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    write_report(out / "report.md", metrics, records, generated, examples)
    return metrics
