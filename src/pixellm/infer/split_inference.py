"""Predictions for a whole split, written as ``PRED.jsonl`` (docs/evaluation.md), batched and resumable.

Resuming: the output file is read first; every complete line's (image, question, mode) is
skipped, and a partially written last line (a crash mid-write) is cut off before appending.
Each batch is flushed and fsync'ed, so at most one batch of work is lost.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pixellm.data.muse import MuseQuestion, iter_questions, load_muse
from pixellm.errors import ConfigError, DataError, InputError
from pixellm.infer.generation import GenerationOptions

logger = logging.getLogger(__name__)

DATA_SPECS = "muse:PATH.json[:IMAGE_ROOT] or refer:ROOT:DATASET:SPLIT_BY:SPLIT[:IMAGE_ROOT]"


@dataclass
class InferenceSummary:
    path: str
    total: int  # questions in the split (after ``limit``)
    written: int  # lines added by this run
    resumed: int  # questions already in the file
    failed: int  # questions whose image could not be read (no line written)


def parse_data_spec(spec: str) -> tuple[list[dict[str, Any]], str | None, str]:
    """``(records, image_root, source name)`` for a data spec.

    - ``muse:PATH.json[:IMAGE_ROOT]``: a MUSE-format file (MUSE, converted refer/semseg sets,
      synthetic data); images relative to ``IMAGE_ROOT`` (default: the JSON file's folder).
    - ``refer:ROOT:DATASET:SPLIT_BY:SPLIT[:IMAGE_ROOT]``: a refer split converted on the fly
      (``pixellm.data.refer.refer_to_muse`` defaults, seed 0: the same records as
      ``pixellm data refer2muse`` with defaults, so evaluate against that file).
    """
    kind, _, rest = spec.partition(":")
    if kind == "muse" and rest:
        path, root = rest, None
        if ".json:" in rest:  # the image root follows the JSON path
            cut = rest.rindex(".json:") + len(".json")
            path, root = rest[:cut], rest[cut + 1 :] or None
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such MUSE JSON file (data spec {spec!r})")
        return load_muse(path), root if root is not None else str(Path(path).parent), path
    if kind == "refer" and rest:
        parts = rest.split(":")
        if len(parts) not in (4, 5):
            raise ConfigError(f"bad refer spec {spec!r}; expected {DATA_SPECS}")
        from pixellm.data.refer import refer_to_muse

        root, dataset, split_by, split = parts[:4]
        records = refer_to_muse(root, dataset, split_by, split)
        return records, parts[4] if len(parts) == 5 else root, f"{dataset}({split_by}) {split}"
    raise ConfigError(f"unknown data spec {spec!r}; expected {DATA_SPECS}")


def read_done(path: str | os.PathLike) -> set[tuple[int, int, bool]]:
    """Keys ``(image, question, teacher_forced)`` of the lines of an existing output.

    Lines are written whole with their newline, so anything after the last newline is the
    partially written tail of an interrupted run: it is cut off. A broken line before it is an
    error naming the line.
    """
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        logger.warning("%s: dropping a partially written last line (%d bytes)", path, len(data) - keep)
        with open(path, "r+b") as f:
            f.truncate(keep)
    done: set[tuple[int, int, bool]] = set()
    for n, raw in enumerate(data[:keep].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            done.add((int(obj["image"]), int(obj["question"]), bool(obj.get("teacher_forced", False))))
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot resume: unreadable line ({err})", path=str(path), record=f"line {n}") from err
    return done


META_SUFFIX = ".meta.json"


def meta_path(out: str | os.PathLike) -> Path:
    """The file next to ``PRED.jsonl`` that records what it answers: ``PRED.jsonl.meta.json``."""
    out = Path(out)
    return out.with_name(out.name + META_SUFFIX)


def run_record(
    model_dir: str | os.PathLike | None, add_instruction: bool, records: Sequence[dict[str, Any]], source: str,
    teacher_forced: bool, options: GenerationOptions | None,
) -> dict[str, Any]:
    """What a prediction file answers: the data (source name and a hash of every record's image,
    size and questions), the model (folder and weights fingerprint) and the settings that change
    the lines (instruction; decoding options for generated lines)."""
    import hashlib
    from dataclasses import asdict

    from pixellm.files import model_fingerprint

    digest = hashlib.sha256()
    for rec in records:
        key = [rec.get("file_name") or rec.get("coco_url"), rec.get("height"), rec.get("width"),
               rec.get("questions")]
        digest.update(json.dumps(key, sort_keys=True, ensure_ascii=False).encode())
    out: dict[str, Any] = {
        "format": 1,
        "data": {"source": str(source), "records": len(records), "sha256": digest.hexdigest()[:16]},
        "model": model_fingerprint(model_dir) if model_dir else None,
        "settings": {"instruction": bool(add_instruction)},
    }
    if not teacher_forced:
        out["generation"] = asdict(options or GenerationOptions())
    return out


def check_run_record(out: Path, record: dict[str, Any]) -> None:
    """Refuse to append to a prediction file written for other data, model or settings (its
    ``.meta.json``); write the record for a new file. One ``ConfigError`` line on a mismatch.

    The data are compared by content (source names may differ between runs), the model by its
    weights fingerprint (the folder may have moved). A file from before these records existed
    is resumed with a warning (nothing to compare)."""
    path = meta_path(out)
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise DataError(f"unreadable run record ({err})", path=str(path)) from err
        checks = [
            ("data", (old.get("data") or {}).get("sha256"), record["data"]["sha256"],
             (old.get("data") or {}).get("source"), record["data"]["source"]),
            ("settings", old.get("settings"), record["settings"], old.get("settings"), record["settings"]),
        ]
        if old.get("model") and record["model"]:
            checks.append(("model", old["model"].get("sha256"), record["model"]["sha256"],
                           old["model"].get("path"), record["model"]["path"]))
        if "generation" in record and "generation" in old:
            checks.append(("decoding settings", old["generation"], record["generation"],
                           old["generation"], record["generation"]))
        for what, a, b, shown_a, shown_b in checks:
            if a != b:
                raise ConfigError(f"{out} holds predictions for other {what} (was {shown_a}, now {shown_b}); "
                                  f"write to another --out, or delete it and {path.name} to start over")
        if "generation" in record and "generation" not in old:
            _write_json_atomic(path, {**old, "generation": record["generation"]})
        return
    if out.exists() and out.stat().st_size > 0:
        logger.warning("%s has no %s: cannot check that it answers the same data and model", out, path.name)
    _write_json_atomic(path, record)


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_inference(
    predictor: Any,
    data: str | Sequence[dict[str, Any]],
    out: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    source: str = "<records>",
    batch_size: int = 4,
    teacher_forced: bool = False,
    limit: int | None = None,
    options: GenerationOptions | None = None,
    progress: bool = True,
    allow_outside_root: bool = False,
) -> InferenceSummary:
    """Predict every question of a split into ``out`` (JSONL), resuming a previous run.

    Args:
        predictor: a ``Predictor`` or a model folder.
        data: a data spec (:func:`parse_data_spec`) or MUSE-format records in memory.
        image_root: image folder for in-memory records (specs carry their own).
        source: name of in-memory records in error messages (e.g. their file).
        teacher_forced: masks from the ground-truth answer text (lines flagged
            ``"teacher_forced": true``) instead of generated answers.
        limit: only the first ``limit`` questions (in file order).
        allow_outside_root: read image names that leave the image root (``../``, absolute);
            by default such a question is skipped and counted as failed.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(predictor, str | os.PathLike):
        from pixellm.infer.predictor import Predictor

        predictor = Predictor.from_pretrained(predictor)
    if isinstance(data, str):
        records, image_root, source = parse_data_spec(data)
    else:
        records = list(data)
    questions = list(iter_questions(records, image_root, source, allow_outside_root))
    if limit is not None:
        questions = questions[:limit]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_run_record(out, run_record(
        predictor.model_dir, predictor.add_instruction, records, source, teacher_forced, options or predictor.options
    ))
    done = read_done(out)
    todo = [q for q in questions if (q.image_index, q.question_index, teacher_forced) not in done]
    summary = InferenceSummary(str(out), len(questions), 0, len(questions) - len(todo), 0)
    bar = tqdm(total=len(questions), initial=summary.resumed, desc="infer", unit="q", disable=not progress)
    with open(out, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            lines, failed = _predict_chunk(predictor, chunk, teacher_forced, options)
            for line in lines:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
            summary.written += len(lines)
            summary.failed += failed
            bar.update(len(chunk))
    bar.close()
    return summary


def _predict_chunk(
    predictor: Any, chunk: list[MuseQuestion], teacher_forced: bool, options: GenerationOptions | None
) -> tuple[list[dict[str, Any]], int]:
    """Lines for one batch; if a question is bad (unreadable image, too long ...), retry one by
    one and skip the bad ones, counted: the same for a batch of one as for a batch of many."""
    if len(chunk) > 1:
        try:
            return _predict(predictor, chunk, teacher_forced, options), 0
        except (DataError, InputError):
            pass
    lines, failed = [], 0
    for q in chunk:
        try:
            lines.extend(_predict(predictor, [q], teacher_forced, options))
        except (DataError, InputError) as err:
            logger.warning("skipping image %d question %d: %s", q.image_index, q.question_index, err)
            failed += 1
    return lines, failed


def _predict(
    predictor: Any, chunk: list[MuseQuestion], teacher_forced: bool, options: GenerationOptions | None
) -> list[dict[str, Any]]:
    for q in chunk:
        if q.image_error:
            raise DataError(f"record {q.image_index}: {q.image_error}", path=q.source or None)
        if not q.image_path:
            raise DataError(f"record {q.image_index} has no 'file_name' or 'coco_url'", path=q.source or None)
    images = [q.image_path for q in chunk]
    questions = [q.question for q in chunk]
    if teacher_forced:
        results = predictor.teacher_forced(images, questions, [q.answer_text() for q in chunk])
    else:
        results = predictor.batch(images, questions, options=options)
    lines = []
    for q, r in zip(chunk, results):
        if r.masks.shape[1:] != (q.height, q.width):
            raise DataError(
                f"record {q.image_index}: image {q.image_path} is {r.masks.shape[1]}x{r.masks.shape[2]} "
                f"but the record says {q.height}x{q.width}",
                path=q.source or None,
            )
        lines.append(r.to_json(image=q.image_index, question=q.question_index))
    return lines
