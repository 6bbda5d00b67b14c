"""``Predictor``: image + question -> answer text with one mask per target.

Thin glue: the processor builds the prompt batch, ``PixelLMForCausalLM.generate`` answers it
(one vision pass, one cached ``generate`` call, a mask for every complete codebook group;
incomplete groups are dropped and counted, where the released code drops *all* masks when the
count is not a multiple of N*L), and the processor reads the ids back into text with ``[SEG]``
markers. ``set_image`` keeps one image's vision features for several questions (SAM-style).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pixellm.data.masks import encode_rle
from pixellm.data.prompts import INSTRUCTIONS, with_instruction
from pixellm.errors import ConfigError, InputError
from pixellm.infer.generation import GenerationOptions
from pixellm.processing.image_processing import ImageInput

History = Sequence[tuple[str, str]]


@dataclass
class PredictionResult:
    """One answer.

    Attributes:
        answer: text with one ``[SEG]`` marker per complete codebook group.
        masks: bool ``[K, H, W]`` at the image's original size (K = markers).
        mask_logits: float32 ``[K, H, W]`` (mask = logits > 0).
        incomplete_groups: codebook-token runs that did not form a full group (dropped).
        token_ids: generated ids up to and excluding EOS (for teacher-forced results: the
            answer's ids).
        question: the question as sent to the model (instruction suffix included).
        teacher_forced: masks come from the given answer text, not from generation.
    """

    answer: str
    masks: np.ndarray
    mask_logits: np.ndarray
    incomplete_groups: int = 0
    token_ids: list[int] = field(default_factory=list)
    question: str = ""
    teacher_forced: bool = False

    @property
    def num_masks(self) -> int:
        return int(self.masks.shape[0])

    def to_json(self, image: int | None = None, question: int | None = None) -> dict[str, Any]:
        """A ``PRED.jsonl`` line (docs/evaluation.md): ``answer`` + COCO RLE ``masks`` (+ indices)."""
        out: dict[str, Any] = {}
        if image is not None:
            out["image"] = int(image)
        if question is not None:
            out["question"] = int(question)
        out["answer"] = self.answer
        out["masks"] = [encode_rle(m) for m in self.masks]
        # mean foreground probability as a confidence, one per mask, in [0, 1]
        probs = 1.0 / (1.0 + np.exp(-self.mask_logits.astype(np.float64)))
        out["mask_scores"] = [
            round(float(p[m].mean()) if m.any() else 0.0, 4) for p, m in zip(probs, self.masks)
        ]
        if self.teacher_forced:
            out["teacher_forced"] = True
        if self.incomplete_groups:
            out["incomplete_groups"] = int(self.incomplete_groups)
        return out


class Predictor:
    """Inference wrapper around ``PixelLMForCausalLM`` and ``PixelLMProcessor``.

    Args:
        model: a ``PixelLMForCausalLM`` (put in eval mode here).
        processor: the matching ``PixelLMProcessor`` (same codebook token ids).
        options: default decoding settings (greedy, 128 new tokens).
        add_instruction: append the training instruction (``pixellm.data.prompts``,
            "Please respond with segmentation mask.") to each question unless it already ends
            with one, where the model was trained with it (``processor.instruction``: the
            released model was; the demo's tiny model is not).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        options: GenerationOptions | None = None,
        add_instruction: bool = True,
    ) -> None:
        cb_model, cb_proc = list(model.codebook_token_ids), list(processor.codebook_token_ids)
        if cb_model != cb_proc:
            raise ConfigError(f"model codebook token ids {cb_model} differ from the processor's {cb_proc}")
        if processor.num_image_tokens != model.config.num_image_tokens:
            raise ConfigError(
                f"processor expands <image> into {processor.num_image_tokens} tokens, "
                f"the model expects {model.config.num_image_tokens}"
            )
        self.model = model.eval()
        self.processor = processor
        self.options = options or GenerationOptions()
        self.add_instruction = add_instruction
        self.model_dir: str | None = None  # set by from_pretrained (recorded by ``infer``)
        self._image: _CachedImage | None = None  # set_image

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load model + processor saved in one folder (``save_pretrained`` of both)."""
        from pixellm.build import load_processor
        from pixellm.files import check_model_folder
        from pixellm.model.modeling_pixellm import PixelLMForCausalLM

        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory}: model folder not found")
        check_model_folder(directory)  # before building anything: no silent default config
        if device is not None:
            device = check_device(device)
        load_kwargs = {"dtype": dtype} if dtype is not None else {}
        model = PixelLMForCausalLM.from_pretrained(str(directory), **load_kwargs)
        if device is not None:
            model = model.to(device)
        predictor = cls(model, load_processor(directory), **kwargs)
        predictor.model_dir = str(directory)
        return predictor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- prompts ---------------------------------------------------------------------------
    @property
    def context_length(self) -> int | None:
        """Tokens the language model can attend to (``max_position_embeddings`` of its config)."""
        n = getattr(self.model.config.text_config, "max_position_embeddings", None)
        return int(n) if n else None

    def check_length(self, prompts: Sequence[str], new_tokens: int) -> None:
        """``InputError`` before any model compute when a question cannot fit the context.

        The budget is the model's context minus the image tokens and ``new_tokens`` (room for the
        answer). Tokenising is cheap; a 10,000-word question would otherwise cost a minute of
        attention and gigabytes of memory before failing or answering from a truncated prompt.
        """
        limit = self.context_length
        if not limit:
            return
        budget = limit - self.processor.num_image_tokens - int(new_tokens)
        for q in prompts:
            n = len(self.processor.tokenizer(q, add_special_tokens=False).input_ids)
            if n > budget:
                raise InputError(
                    f"the question is too long: {n} tokens, at most {max(budget, 0)} fit (context {limit} "
                    f"tokens, of which {self.processor.num_image_tokens} for the image and {new_tokens} "
                    "for the answer)"
                )

    def prepare_question(self, question: str) -> str:
        """Question as sent to the model: stripped, instruction appended when enabled.

        Text that is not valid Unicode (bytes of another encoding in ``argv`` arrive as lone
        surrogates) is decoded as UTF-8 with replacement characters instead of failing in the
        tokenizer."""
        if isinstance(question, bytes):
            question = question.decode("utf-8", errors="replace")
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty")
        try:
            raw = question.encode("utf-8", errors="surrogateescape")  # argv bytes back as they were
        except UnicodeEncodeError:  # other lone surrogates
            raw = question.encode("utf-8", errors="replace")
        question = raw.decode("utf-8", errors="replace")
        question = question.strip()
        if self.add_instruction and self.processor.instruction and not any(question.endswith(s) for s in INSTRUCTIONS):
            question = with_instruction(question)
        return question

    def _encode(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        answers: Sequence[str] | None,
        histories: Sequence[History] | None,
        padding_side: str,
        preprocessed: Any = None,
    ) -> dict[str, Any]:
        from pixellm.processing.collate import collate

        examples = [
            self.processor.encode_example(
                im, q, None if answers is None else answers[i], history=() if histories is None else histories[i],
                preprocessed=preprocessed,
            )
            for i, (im, q) in enumerate(zip(images, questions))
        ]
        batch = collate(examples, self.processor.pad_token_id, padding_side=padding_side)
        batch.pop("skipped", None)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _check_encoded(self, batch: dict[str, Any], new_tokens: int) -> None:
        """The whole prompt (template, history, answer) plus ``new_tokens`` within the context."""
        limit = self.context_length
        length = int(batch["input_ids"].shape[1])
        if limit and length + new_tokens > limit:
            raise InputError(f"the conversation is too long: {length} tokens plus {new_tokens} for the answer "
                             f"exceed the model's context of {limit} tokens")

    # -- generation -------------------------------------------------------------------------
    def __call__(
        self,
        image: ImageInput,
        question: str,
        history: History = (),
        options: GenerationOptions | None = None,
    ) -> PredictionResult:
        """Answer one question about one image. ``history``: earlier (question, answer) turns
        (answers with ``[SEG]`` markers) of a multi-turn chat about the same image."""
        return self.batch([image], [question], [history], options)[0]

    @torch.inference_mode()
    def batch(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        histories: Sequence[History] | None = None,
        options: GenerationOptions | None = None,
    ) -> list[PredictionResult]:
        """Answer B questions in one left-padded generation; same answers as one by one."""
        if len(images) != len(questions) or (histories is not None and len(histories) != len(questions)):
            raise InputError(f"need one image (and history) per question, got {len(images)} images, "
                             f"{len(questions)} questions")
        if not questions:
            return []
        options = options or self.options
        options.validate()
        prompts = [self.prepare_question(q) for q in questions]
        self.check_length(prompts, options.max_new_tokens)
        batch = self._encode(images, prompts, None, histories, "left")
        self._check_encoded(batch, options.max_new_tokens)
        return self._generate(batch, prompts, options)

    # -- one image, several questions ------------------------------------------------------
    @torch.inference_mode()
    def set_image(self, image: ImageInput) -> None:
        """Preprocess and encode ``image`` once (SAM-style): later :meth:`ask` calls reuse
        its vision features and give the answers and masks of ``predictor(image, question)``
        without running the vision tower again. A new ``set_image`` replaces the image,
        :meth:`reset_image` forgets it; ``__call__``/``batch`` neither use nor change it."""
        self._image = None  # an unreadable new image leaves no stale one behind
        pre = self.processor.image_processor.preprocess_one(image)
        pixel_values, resized, original = pre
        device = self.device
        features = self.model.encode_images(
            pixel_values[None].to(device),
            torch.tensor([resized], dtype=torch.long, device=device),
            torch.tensor([original], dtype=torch.long, device=device),
        )
        self._image = _CachedImage(pre, features)

    def reset_image(self) -> None:
        """Forget the image of :meth:`set_image`."""
        self._image = None

    @property
    def has_image(self) -> bool:
        return self._image is not None

    @torch.inference_mode()
    def ask(self, question: str, history: History = (), options: GenerationOptions | None = None) -> PredictionResult:
        """Answer one question about the image of :meth:`set_image` (``history`` as for
        ``__call__``)."""
        if self._image is None:
            raise InputError("no image set: call set_image(image) first")
        options = options or self.options
        options.validate()
        prompts = [self.prepare_question(question)]
        self.check_length(prompts, options.max_new_tokens)
        batch = self._encode([None], prompts, None, [history], "left", preprocessed=self._image.preprocessed)
        self._check_encoded(batch, options.max_new_tokens)
        return self._generate(batch, prompts, options, self._image.features)[0]

    def _generate(
        self, batch: dict[str, Any], prompts: list[str], options: GenerationOptions, features: Any = None
    ) -> list[PredictionResult]:
        """``model.generate`` on an encoded batch (``features``: cached vision features, or None
        to encode ``batch``'s pixels) -> one result per prompt."""
        if options.do_sample and options.seed is not None:
            torch.manual_seed(options.seed)
        out = self.model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=None if features is not None else batch["pixel_values"],
            resized_sizes=batch["resized_sizes"],
            original_sizes=batch["original_sizes"],
            image_features=features,
            eos_token_id=self.processor.tokenizer.eos_token_id,
            pad_token_id=self.processor.pad_token_id,
            **options.generate_kwargs(),
        )
        results = []
        for b, n in enumerate(out.lengths):
            ids = out.sequences[b, :n].tolist()
            p = self.processor.parse_answer(ids)
            results.append(_result(p.text, out.pred_masks[b], p.incomplete, ids, prompts[b], False))
        return results

    # -- teacher forcing ---------------------------------------------------------------------
    @torch.inference_mode()
    def teacher_forced(
        self, images: Sequence[ImageInput], questions: Sequence[str], answers: Sequence[str]
    ) -> list[PredictionResult]:
        """Masks from given answers (``{seg}`` / ``[SEG]`` markers): one forward pass, no
        generation (the "teacher-forced" rows of the MUSE evaluation)."""
        if not (len(images) == len(questions) == len(answers)):
            raise InputError(f"got {len(images)} images, {len(questions)} questions, {len(answers)} answers")
        if not questions:
            return []
        prompts = [self.prepare_question(q) for q in questions]
        self.check_length(prompts, 0)
        batch = self._encode(images, prompts, answers, None, "right")
        self._check_encoded(batch, 0)
        labels = batch.pop("labels")
        out = self.model(**batch)
        results = []
        for b in range(len(questions)):
            keep = (labels[b] != -100) & (batch["attention_mask"][b] > 0)
            ids = [t for t in batch["input_ids"][b][keep].tolist() if t != self.processor.tokenizer.eos_token_id]
            p = self.processor.parse_answer(ids)
            results.append(_result(p.text, out.pred_masks[b], p.incomplete, ids, prompts[b], True))
        return results


@dataclass
class _CachedImage:
    """``set_image``'s image: ``preprocess_one`` output and its ``ImageFeatures`` (batch of 1)."""

    preprocessed: tuple[torch.Tensor, tuple[int, int], tuple[int, int]]
    features: Any


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``ConfigError`` when this torch build cannot use it
    (e.g. ``cuda`` on a CPU-only install), instead of an assertion deep inside torch."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r} (use cpu, cuda, cuda:1, mps ...)") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but this torch build has no usable CUDA "
                              f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return dev


def _result(
    text: str, logits: torch.Tensor, incomplete: int, ids: list[int], question: str, teacher_forced: bool
) -> PredictionResult:
    arr = logits.detach().float().cpu().numpy()
    return PredictionResult(
        answer=text,
        masks=arr > 0,
        mask_logits=arr,
        incomplete_groups=int(incomplete),
        token_ids=list(ids),
        question=question,
        teacher_forced=teacher_forced,
    )
