"""Files of one prediction: ``overlay.png`` and ``prediction.json`` (``pixellm predict --out``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pixellm.infer.overlay import render_overlay, target_names
from pixellm.infer.predictor import PredictionResult
from pixellm.processing.image_processing import ImageInput, load_image


def prediction_json(result: PredictionResult) -> dict[str, Any]:
    """``question``, ``answer`` (``[SEG]`` markers), ``targets`` (names per marker), ``masks``
    (COCO RLE at the original size), ``mask_scores``, ``incomplete_groups``."""
    line = result.to_json()
    return {
        "question": result.question,
        "answer": line["answer"],
        "targets": target_names(result.answer),
        "masks": line["masks"],
        "mask_scores": line["mask_scores"],
        "incomplete_groups": int(result.incomplete_groups),
    }


def write_prediction(result: PredictionResult, image: ImageInput, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``overlay.png`` (each target in its colour, legend keyed to its words in the answer)
    and ``prediction.json`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"overlay": out / "overlay.png", "prediction": out / "prediction.json"}
    render_overlay(load_image(image), result.masks, target_names(result.answer)).save(paths["overlay"])
    paths["prediction"].write_text(json.dumps(prediction_json(result), indent=1) + "\n", encoding="utf-8")
    return paths
