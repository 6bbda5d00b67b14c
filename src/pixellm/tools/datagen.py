"""MUSE-style data generation and filtering through an OpenAI-compatible chat API (docs/tools.md).

``generate``: per image, send the picture (base64 data URL), every instance's category and box
and the requirements of the supplement's Figure C.3; the model answers with JSON question-answer
pairs whose answers carry one ``{seg}`` after each target. Valid pairs become MUSE records.

``filter_pairs``: per question-answer pair, ask the model whether the question is vague or the
answer omits semantically equivalent instances (supplement C.1) and drop flagged pairs.

Every request goes through the shared :class:`pixellm.chat_client.ChatClient` (the one the LLM
judge uses): a timeout per request, bounded retries with exponential back-off on transient
failures, and an SQLite reply cache keyed by (model, messages, parameters, attempt) that makes
re-runs never ask twice, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pixellm.chat_client import ChatClient, ChatError, ChatSettings, Message, Transport
from pixellm.data.muse import SEG_PLACEHOLDER, load_muse, read_json, resolve_image_path, target_description
from pixellm.errors import ConfigError, DataError

__all__ = ["ChatClient", "ChatSettings", "FilterStats", "GenerateStats", "ReplyError", "filter_pairs", "generate"]


# ----------------------------------------------------------------------------- prompts

GENERATION_PROMPT = """\
You write question-answer pairs about an image for training a model that answers with a \
segmentation mask for every object it mentions. The image has a height of {height} and a width \
of {width}. The objects in the image, each with its id and bounding box, are:
{objects}
Coordinates represent (top-left x, top-left y, bottom-right x, bottom-right y).
Write {count} question(s). Each question must involve at least two of these objects and be framed \
to require reasoning about the image for a response. Additional requirements:
1. The answer must reference each target object or its equivalent and should not imply other \
potential objects.
2. The question should describe a complete activity, not just a combination of several sub-problems.
3. Rephrase the class name in the answer to indicate the object's location or shape.
4. In the answer, write {seg} right after the description of each target object, once per target.
Reply with JSON only, in this form:
{{"pairs": [{{"question": "...", "answer": "... the red mug on the left {seg} ...", \
"targets": [ids of the target objects, in the order of their {seg} in the answer], \
"descriptions": [the rephrased description of each target, same order]}}]}}"""

FILTER_PROMPT = """\
You check question-answer pairs about an image. The image has a height of {height} and a width of \
{width}. The objects in the image, each with its id and bounding box (top-left x, top-left y, \
bottom-right x, bottom-right y), are:
{objects}
Question: {question}
Answer: {answer}
Target objects of the answer: {targets}
Decide two things:
1. vague: the question is vague and open to multiple interpretations (for example "What should I \
take with me on my outing?", where "outing" can mean many activities).
2. omits_equivalent: the answer omits objects in the image that are semantically equivalent to a \
target (for example the question asks for a fruit for a snack and the answer names one apple while \
other fruit is visible).
Reply with JSON only: {{"vague": true or false, "omits_equivalent": true or false, "reason": "..."}}"""


def object_lines(ann_list: list[dict[str, Any]]) -> str:
    """``[id] category at [x0, y0, x1, y1];`` per instance (boxes converted from COCO xywh)."""
    lines = []
    for i, ann in enumerate(ann_list):
        x, y, w, h = (float(v) for v in ann["bbox"])
        box = ", ".join(f"{v:.2f}".rstrip("0").rstrip(".") for v in (x, y, x + w, y + h))
        lines.append(f"[{i}] {ann.get('category_name') or 'object'} at [{box}];")
    return "\n".join(lines)


def image_content(path: str) -> dict[str, Any]:
    """OpenAI ``image_url`` content part holding the image file as a base64 data URL."""
    mime = mimetypes.guess_type(path)[0] or "image/jpeg"
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def user_message(text: str, image_path: str | None) -> list[Message]:
    """A one-turn conversation: the text, plus the image when ``image_path`` is given."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image_path is not None:
        content.insert(0, image_content(image_path))
    return [{"role": "user", "content": content}]


# ----------------------------------------------------------------------------- replies


class ReplyError(ValueError):
    """A model reply that is not usable (bad JSON, unknown ids, wrong ``{seg}`` count)."""


def parse_json_reply(text: str) -> dict[str, Any]:
    """The JSON object in a reply, tolerating Markdown fences and prose around it."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ReplyError("no JSON object in the reply")
    try:
        obj = json.loads(body[start : end + 1])
    except json.JSONDecodeError as err:
        raise ReplyError(f"invalid JSON in the reply ({err.msg})") from err
    if not isinstance(obj, dict):
        raise ReplyError("reply JSON is not an object")
    return obj


@dataclass
class QAPair:
    """One validated generated pair; ``targets`` index ``ann_list``."""

    question: str
    answer: str
    targets: list[int]
    descriptions: list[str]


def validate_pair(raw: Any, num_instances: int, min_targets: int = 1) -> QAPair:
    """Check one generated pair: ids exist and are distinct, one ``{seg}`` per target."""
    if not isinstance(raw, dict):
        raise ReplyError("pair is not an object")
    question, answer, targets = raw.get("question"), raw.get("answer"), raw.get("targets")
    if not isinstance(question, str) or not question.strip():
        raise ReplyError("missing 'question'")
    if not isinstance(answer, str) or not answer.strip():
        raise ReplyError("missing 'answer'")
    if not isinstance(targets, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
        raise ReplyError("'targets' must be a list of integer ids")
    bad = [t for t in targets if not 0 <= t < num_instances]
    if bad:
        raise ReplyError(f"unknown target ids {bad} (image has {num_instances} instances)")
    if len(set(targets)) != len(targets):
        raise ReplyError(f"repeated target ids {targets}")
    if len(targets) < min_targets:
        raise ReplyError(f"{len(targets)} targets, need at least {min_targets}")
    segs = answer.count(SEG_PLACEHOLDER)
    if segs != len(targets):
        raise ReplyError(f"answer has {segs} {SEG_PLACEHOLDER} but {len(targets)} targets")
    descriptions = raw.get("descriptions")
    if not (isinstance(descriptions, list) and len(descriptions) == len(targets)):
        descriptions = [""] * len(targets)  # optional: fall back to the category names
    return QAPair(question.strip(), answer.strip(), list(targets), [str(d).strip() for d in descriptions])


def validate_generation(reply: str, num_instances: int, min_targets: int = 1) -> tuple[list[QAPair], list[str]]:
    """Parse a generation reply: the valid pairs and one reason per rejected pair."""
    obj = parse_json_reply(reply)
    raw_pairs = obj.get("pairs", [obj] if "question" in obj else None)
    if not isinstance(raw_pairs, list) or not raw_pairs:
        raise ReplyError("reply has no 'pairs' list")
    pairs, errors = [], []
    for raw in raw_pairs:
        try:
            pairs.append(validate_pair(raw, num_instances, min_targets))
        except ReplyError as err:
            errors.append(str(err))
    return pairs, errors


# ----------------------------------------------------------------------------- inputs


def load_image_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Image records with ``ann_list`` from a MUSE JSON list or a COCO instances JSON.

    COCO: crowd annotations are skipped; ``category_name`` comes from ``categories``.
    """
    path = str(path)
    data = read_json(path)
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        records = coco_to_records(data, path)
    elif isinstance(data, list):
        records = data
    else:
        raise DataError("expected a MUSE list of image records or a COCO instances object", path=path)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"record {i}: expected an object", path=path)
        for key in ("height", "width", "ann_list"):
            if key not in rec:
                raise DataError(f"record {i}: missing field '{key}'", path=path)
        for j, ann in enumerate(rec["ann_list"]):
            bbox = ann.get("bbox") if isinstance(ann, dict) else None
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise DataError(f"record {i} annotation {j}: 'bbox' must be [x, y, w, h]", path=path)
    return records


def coco_to_records(data: dict[str, Any], path: str) -> list[dict[str, Any]]:
    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for n, ann in enumerate(data["annotations"]):
        if ann.get("iscrowd"):
            continue
        if ann.get("category_id") not in names:
            raise DataError(f"annotation {n}: unknown category_id {ann.get('category_id')}", path=path)
        by_image[ann["image_id"]].append({**ann, "category_name": names[ann["category_id"]]})
    records = []
    for img in data["images"]:
        rec = {k: img[k] for k in ("file_name", "coco_url", "height", "width", "id") if k in img}
        rec["ann_list"] = by_image.get(img["id"], [])
        records.append(rec)
    return records


def _image_path(rec: dict[str, Any], image_root: str | None, index: int, source: str) -> str:
    path = resolve_image_path(rec, image_root)
    if path is None:
        raise DataError(f"record {index}: no 'file_name' or 'coco_url'", path=source)
    if not os.path.isfile(path):
        raise DataError(f"record {index}: image file not found: {path}", path=source)
    return path


def _write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)  # never leave a half-written output


# ----------------------------------------------------------------------------- generate


@dataclass
class GenerateStats:
    images: int = 0  # images considered (after --limit)
    skipped: int = 0  # fewer than min_instances instances
    failed: int = 0  # no valid pair after every attempt
    records: int = 0  # records written
    pairs: int = 0  # question-answer pairs written
    rejected_pairs: int = 0  # pairs dropped by validation
    requests: int = 0  # requests sent (cache misses, every try)
    reasons: dict[str, int] = field(default_factory=dict)


def generate(
    images: str | os.PathLike,
    out: str | os.PathLike,
    settings: ChatSettings,
    image_root: str | None = None,
    limit: int | None = None,
    questions_per_image: int = 1,
    attempts: int = 2,
    min_instances: int = 2,
    min_targets: int = 1,
    send_image: bool = True,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    transport: Transport | None = None,
) -> GenerateStats:
    """Generate MUSE records from images + instance annotations; write them to ``out``.

    A reply that yields no valid pair is asked again (up to ``attempts`` requests per image).
    Output records keep the input's image fields and ``ann_list``; ``answers[q]`` are copies of
    the targets' annotations with ``rephrased_name`` set to the generated description. The reply
    cache defaults to ``OUT.cache.sqlite``; ``transport`` replaces the HTTP client (tests).
    """
    if questions_per_image < 1 or attempts < 1:
        raise ConfigError("questions_per_image and attempts must be >= 1")
    records = load_image_records(images)[: limit if limit is not None else None]
    with ChatClient(settings, cache or default_cache(out), transport=transport) as client:
        stats = GenerateStats(images=len(records))
        reasons: dict[str, int] = defaultdict(int)
        output = []
        for i, rec in enumerate(tqdm(records, desc="datagen generate", unit="img", disable=not progress)):
            anns = rec["ann_list"]
            if len(anns) < min_instances:
                stats.skipped += 1
                continue
            path = _image_path(rec, image_root, i, str(images)) if send_image else None
            text = GENERATION_PROMPT.format(
                height=rec["height"], width=rec["width"], objects=object_lines(anns),
                count=questions_per_image, seg=SEG_PLACEHOLDER,
            )
            messages = user_message(text, path)
            pairs: list[QAPair] = []
            for attempt in range(attempts):
                reply = _ask(client, messages, attempt, f"image {i}")
                try:
                    pairs, errors = validate_generation(reply, len(anns), min_targets)
                except ReplyError as err:
                    pairs, errors = [], [str(err)]
                stats.rejected_pairs += len(errors)
                for e in errors:
                    reasons[re.sub(r"\d+|\[.*?\]", "N", e)] += 1  # group reasons by kind
                if pairs:
                    break
            if not pairs:
                stats.failed += 1
                continue
            output.append(pairs_to_record(rec, pairs))
            stats.pairs += len(pairs)
        stats.records = len(output)
        stats.requests = client.requests
        stats.reasons = dict(reasons)
        _write_json(out, output)
        return stats


def default_cache(out: str | os.PathLike) -> str:
    """The reply cache next to the output: ``OUT.cache.sqlite``."""
    return str(out) + ".cache.sqlite"


def pairs_to_record(rec: dict[str, Any], pairs: list[QAPair]) -> dict[str, Any]:
    """A MUSE record: the image fields and ``ann_list`` of ``rec`` plus the pairs."""
    out = {k: v for k, v in rec.items() if k not in ("questions", "answers", "text_answers")}
    out["questions"] = [p.question for p in pairs]
    out["text_answers"] = [p.answer for p in pairs]
    out["answers"] = []
    for p in pairs:
        targets = []
        for t, desc in zip(p.targets, p.descriptions):
            ann = dict(rec["ann_list"][t])
            ann["rephrased_name"] = desc or target_description(ann)
            targets.append(ann)
        out["answers"].append(targets)
    return out


# ----------------------------------------------------------------------------- filter


@dataclass
class FilterStats:
    pairs: int = 0
    kept: int = 0
    vague: int = 0
    omits_equivalent: int = 0
    unjudged: int = 0  # no valid verdict after every attempt (dropped unless keep_unjudged)
    requests: int = 0

    @property
    def dropped(self) -> int:
        return self.pairs - self.kept

    @property
    def dropped_fraction(self) -> float:
        return self.dropped / self.pairs if self.pairs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dropped": self.dropped, "dropped_fraction": self.dropped_fraction}


def parse_verdict(reply: str) -> tuple[bool, bool, str]:
    """``(vague, omits_equivalent, reason)`` from a filter reply."""
    obj = parse_json_reply(reply)
    flags = []
    for name in ("vague", "omits_equivalent"):
        value = obj.get(name)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            value = value.strip().lower() in ("true", "yes")
        if not isinstance(value, bool):
            raise ReplyError(f"'{name}' must be true or false")
        flags.append(value)
    return flags[0], flags[1], str(obj.get("reason", ""))


def filter_pairs(
    data: str | os.PathLike,
    out: str | os.PathLike,
    settings: ChatSettings,
    image_root: str | None = None,
    send_image: bool = True,
    attempts: int = 2,
    keep_unjudged: bool = False,
    report: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    transport: Transport | None = None,
) -> FilterStats:
    """Drop pairs the model flags as vague or omitting equivalent instances; write ``out``.

    ``report`` (optional JSON) lists every pair's verdict: image, question, flags, reason.
    Records left with no question are dropped. The reply cache defaults to ``OUT.cache.sqlite``.
    """
    records = load_muse(data)
    with ChatClient(settings, cache or default_cache(out), transport=transport) as client:
        stats = FilterStats(pairs=sum(len(r["questions"]) for r in records))
        verdicts, output = [], []
        bar = tqdm(total=stats.pairs, desc="datagen filter", unit="pair", disable=not progress)
        for i, rec in enumerate(records):
            anns = rec.get("ann_list") or [a for targets in rec["answers"] for a in targets]
            path = _image_path(rec, image_root, i, str(data)) if send_image else None
            texts = rec.get("text_answers") or [None] * len(rec["questions"])
            keep: list[int] = []
            for q, (question, targets, text) in enumerate(zip(rec["questions"], rec["answers"], texts)):
                descs = [target_description(a) for a in targets]
                answer = text if text is not None else ", ".join(f"{d} {SEG_PLACEHOLDER}" for d in descs)
                prompt = FILTER_PROMPT.format(
                    height=rec["height"], width=rec["width"], objects=object_lines(anns),
                    question=question, answer=answer, targets="; ".join(descs) or "none",
                )
                messages = user_message(prompt, path)
                verdict: tuple[bool, bool, str] | None = None
                for attempt in range(attempts):
                    reply = _ask(client, messages, attempt, f"image {i} question {q}")
                    try:
                        verdict = parse_verdict(reply)
                        break
                    except ReplyError:
                        continue
                if verdict is None:
                    stats.unjudged += 1
                    if keep_unjudged:
                        keep.append(q)
                else:
                    stats.vague += verdict[0]
                    stats.omits_equivalent += verdict[1]
                    if not (verdict[0] or verdict[1]):
                        keep.append(q)
                verdicts.append({
                    "image": i, "question": q, "text": question,
                    "vague": None if verdict is None else verdict[0],
                    "omits_equivalent": None if verdict is None else verdict[1],
                    "reason": "no valid verdict" if verdict is None else verdict[2],
                    "kept": q in keep,
                })
                bar.update(1)
            stats.kept += len(keep)
            if keep:
                output.append(_select_questions(rec, keep))
        bar.close()
        stats.requests = client.requests
        _write_json(out, output)
        if report is not None:
            _write_json(report, {"stats": stats.to_dict(), "verdicts": verdicts})
        return stats


def _ask(client: ChatClient, messages: list[Message], attempt: int, where: str) -> str:
    try:
        return client.ask(messages, attempt)
    except ChatError as err:
        raise ChatError(f"datagen, {where}: {err}") from err


def _select_questions(rec: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    out = dict(rec)
    for key in ("questions", "answers", "text_answers"):
        if rec.get(key) is not None:
            out[key] = [rec[key][q] for q in keep]
    return out
