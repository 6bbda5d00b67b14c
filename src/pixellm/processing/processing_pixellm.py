"""``PixelLMProcessor``: tokenizer + image processor + llava_v1 template, saved with the model.

It turns (image, question[, answer, masks]) into the model's batch contract
(``docs/architecture.md``) and generated token ids back into text with one ``[SEG]`` marker per
complete codebook group.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pixellm.conventions import (
    IMAGE_TOKEN_INDEX,
    SEG_MARKER,
    count_seg,
    find_codebook_groups,
    grid_valid_mask,
)
from pixellm.errors import ConfigError, InputError
from pixellm.processing.collate import collate
from pixellm.processing.conversation import SYSTEM_PROMPT, build_prompt, encode_conversation
from pixellm.processing.image_processing import (
    IMAGE_PROCESSOR_FILE,
    ImageInput,
    PixelLMImageProcessor,
    read_config_json,
)
from pixellm.processing.tokenizer import add_codebook_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PROCESSOR_FILE = "processor_config.json"
_CONFIG_KEYS = ("num_codebook_tokens", "num_image_tokens", "llm_image_grid", "max_length", "image_token_index",
                "system_prompt", "instruction")


@dataclass
class ParsedAnswer:
    """Generated ids read back: ``text`` has one ``[SEG]`` per complete group.

    ``group_spans`` are the (start, end) token spans of the complete groups, in order (the i-th
    marker <-> the i-th span <-> the i-th mask); ``incomplete`` counts dropped partial groups.
    """

    text: str
    num_groups: int
    incomplete: int
    group_spans: list[tuple[int, int]] = field(default_factory=list)


class PixelLMProcessor:
    """Tokenizer + image processor + template.

    Args:
        tokenizer: any HF tokenizer; the codebook tokens and ``<im_start>``/``<im_end>`` are added
            if missing (so ``len(tokenizer)`` may grow: size the embeddings after this).
        image_processor: resize / normalise / pad.
        num_codebook_tokens: tokens per target group, the model config's ``num_codebook_tokens``
            (N*L, or N with a shared codebook; released 6). ``pixellm.build.build_processor``
            builds a processor from a config and records the ids in it.
        num_image_tokens: LLM image tokens per image; must equal ``llm_image_grid ** 2``.
        llm_image_grid: side of the LLM image-token grid (released 16).
        max_length: maximum training sequence length, image tokens included (released 512).
        image_token_index: placeholder id of image tokens in ``input_ids`` (released -200).
        system_prompt: the template's system text (released: llava_v1's; "" = none).
        instruction: whether the model's segmentation questions end in the instruction suffix
            ("Please respond with segmentation mask.", ``pixellm.data.prompts``; released: yes).
            The trainer records what its data carried; the ``Predictor`` appends the suffix only
            where this is true.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: PixelLMImageProcessor,
        num_codebook_tokens: int = 6,
        num_image_tokens: int = 256,
        llm_image_grid: int = 16,
        max_length: int = 512,
        image_token_index: int = IMAGE_TOKEN_INDEX,
        system_prompt: str = SYSTEM_PROMPT,
        instruction: bool = True,
    ):
        if llm_image_grid <= 0 or num_image_tokens != llm_image_grid**2:
            raise ConfigError(f"num_image_tokens ({num_image_tokens}) must equal llm_image_grid**2 ({llm_image_grid}**2)")
        if max_length <= num_image_tokens:
            raise ConfigError(f"max_length ({max_length}) must exceed num_image_tokens ({num_image_tokens})")
        if image_token_index >= 0:
            raise ConfigError(f"image_token_index must be negative (not a vocabulary id), got {image_token_index}")
        if not isinstance(instruction, bool):
            raise ConfigError(f"instruction must be true or false, got {instruction!r}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_codebook_tokens = int(num_codebook_tokens)
        self.num_image_tokens = int(num_image_tokens)
        self.llm_image_grid = int(llm_image_grid)
        self.max_length = int(max_length)
        self.image_token_index = int(image_token_index)
        self.system_prompt = str(system_prompt)
        self.instruction = instruction
        ids = add_codebook_tokens(tokenizer, self.num_codebook_tokens)
        self.codebook_token_ids: list[int] = ids[: self.num_codebook_tokens]
        self.im_start_id, self.im_end_id = ids[self.num_codebook_tokens :]

    # --- ids ---------------------------------------------------------------------------------

    @property
    def pad_token_id(self) -> int:
        """Padding id: the tokenizer's pad (``<unk>`` for LLaMA/tiny), else EOS, else 0."""
        for tid in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if tid is not None:
                return int(tid)
        return 0

    def image_attention_mask(self, resized_size: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Long ``[G*G]`` (or ``[B, G*G]`` for ``[B, 2]`` sizes), row-major over the LLM image grid:
        1 where the cell covers real pixels, 0 where it lies wholly in the zero padding."""
        valid = grid_valid_mask(torch.as_tensor(resized_size), self.image_processor.image_size, self.llm_image_grid)
        return valid.flatten(-2).long()

    # --- encoding ----------------------------------------------------------------------------

    def build_prompt(self, question: str, answer: str | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
        return build_prompt(question, answer, history, self.system_prompt)

    def encode_example(
        self,
        image: ImageInput,
        question: str,
        answer: str | None = None,
        masks: np.ndarray | torch.Tensor | None = None,
        history: Sequence[tuple[str, str]] = (),
        preprocessed: tuple[torch.Tensor, tuple[int, int], tuple[int, int]] | None = None,
        supervise_history: bool = False,
    ) -> dict[str, Any]:
        """One sample for :func:`pixellm.processing.collate.collate`.

        ``answer`` carries one ``{seg}`` (or ``[SEG]``) per target; ``masks`` ``[G, H, W]`` at the
        image's size, one per marker in order. Returns ``input_ids``, ``attention_mask``,
        ``labels`` (with an answer), ``pixel_values`` [3,S,S], ``resized_size``, ``original_size``,
        ``masks`` (trimmed to the targets kept after truncation, or None), ``num_targets``,
        ``truncated``. ``preprocessed``: ``image_processor.preprocess_one(image)`` done earlier
        (``image`` is then not read). ``supervise_history``: train on every answer of the
        conversation (``history`` included); ``masks`` then holds the targets of every answer, in
        order.
        """
        pixel_values, resized, original = preprocessed or self.image_processor.preprocess_one(image)
        conv = encode_conversation(
            self.tokenizer,
            question,
            answer,
            codebook_ids=self.codebook_token_ids,
            num_image_tokens=self.num_image_tokens,
            max_length=self.max_length if answer is not None else None,
            image_token_index=self.image_token_index,
            history=history,
            system_prompt=self.system_prompt,
            supervise_history=supervise_history,
        )
        kept_masks = None
        if masks is not None:
            if answer is None:
                raise InputError("masks were given without an answer")
            kept_masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
            n_markers = count_seg(answer) + (sum(count_seg(a) for _, a in history) if supervise_history else 0)
            if kept_masks.ndim != 3 or kept_masks.shape[0] != n_markers:
                raise InputError(
                    f"answer has {n_markers} {{seg}} markers but masks have shape {tuple(kept_masks.shape)} "
                    f"(expected [{n_markers}, H, W]); answer {answer[:60]!r}"
                )
            if tuple(kept_masks.shape[1:]) != tuple(original):
                raise InputError(f"masks are {tuple(kept_masks.shape[1:])} but the image is {tuple(original)} (H, W)")
            kept_masks = kept_masks[: conv.num_targets]

        input_ids = torch.tensor(conv.input_ids, dtype=torch.long)
        attention_mask = torch.ones_like(input_ids)
        image_pos = (input_ids == self.image_token_index).nonzero().flatten()
        if len(image_pos) % self.num_image_tokens:
            raise InputError(f"found {len(image_pos)} image tokens, not a multiple of {self.num_image_tokens}")
        cells = self.image_attention_mask(resized)
        attention_mask[image_pos] = cells.repeat(len(image_pos) // self.num_image_tokens)
        example: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "resized_size": torch.tensor(resized, dtype=torch.long),
            "original_size": torch.tensor(original, dtype=torch.long),
            "masks": kept_masks,
            "num_targets": conv.num_targets,
            "truncated": conv.truncated,
        }
        if conv.labels is not None:
            example["labels"] = torch.tensor(conv.labels, dtype=torch.long)
        return example

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        text: str | Sequence[str],
        answers: str | Sequence[str] | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
    ) -> dict[str, Any]:
        """Batch per the contract, for questions ``text`` (one per image; transformers' name).
        Without answers: inference prompts (ending ``"ASSISTANT:"``), left padding, no labels:
        ``model.generate(**processor(images=image, text=question))``. With answers: labels, right
        padding. Masks: use :meth:`encode_example` + ``collate``. ``return_tensors``: ``"pt"``
        (torch tensors, the only kind)."""
        if return_tensors not in (None, "pt"):
            raise InputError(f"return_tensors={return_tensors!r}: only 'pt' (torch) batches are made")
        questions = text
        if isinstance(questions, str):
            questions = [questions]
            images = [images]  # type: ignore[list-item]
            answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(images, (list, tuple)) or len(images) != len(questions):
            raise InputError(f"need one image per question, got {len(questions)} questions")
        if answers is not None and len(answers) != len(questions):
            raise InputError(f"got {len(answers)} answers for {len(questions)} questions")
        side = padding_side or ("left" if answers is None else "right")
        examples = [
            self.encode_example(im, q, None if answers is None else answers[i])
            for i, (im, q) in enumerate(zip(images, questions))
        ]
        batch = collate(examples, self.pad_token_id, padding_side=side)
        batch.pop("skipped")
        return batch

    # --- decoding ----------------------------------------------------------------------------

    def parse_answer(self, token_ids: Sequence[int] | torch.Tensor) -> ParsedAnswer:
        """Generated ids -> text with one ``[SEG]`` per complete group, dropping partial groups
        and special tokens (BOS/EOS/pad, ``<im_start>``/``<im_end>``)."""
        ids = [int(t) for t in torch.as_tensor(token_ids).reshape(-1).tolist()]
        complete, incomplete = find_codebook_groups(ids, self.codebook_token_ids)
        specials = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        specials |= set(self.tokenizer.all_special_ids)
        marker = self.codebook_token_ids[0]  # one surviving token per group, rendered as [SEG] below
        starts = {s: e for s, e in complete}
        dropped = {k for s, e in incomplete for k in range(s, e)}
        kept: list[int] = []
        i = 0
        while i < len(ids):
            if i in starts:
                kept.append(marker)
                i = starts[i]
                continue
            if i not in dropped and ids[i] >= 0 and ids[i] not in specials:
                kept.append(ids[i])
            i += 1
        # One decode call (not per segment) keeps the tokenizer's own spacing rules.
        text = self.tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text = text.replace(self.tokenizer.convert_ids_to_tokens(marker), SEG_MARKER).strip()
        return ParsedAnswer(text, len(complete), len(incomplete), complete)

    # --- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"processor_class": type(self).__name__, **{k: getattr(self, k) for k in _CONFIG_KEYS}}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write tokenizer files, ``preprocessor_config.json`` and ``processor_config.json``."""
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(str(save_directory))
        self.image_processor.save_pretrained(save_directory)
        (Path(save_directory) / PROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> PixelLMProcessor:
        """Load from a local folder. Missing processor / image-processor configs fall back to the
        released defaults (e.g. a released ``hf_model`` folder, which has only tokenizer files).

        The tokenizer loader reads the folder's ``config.json``: for a saved PixelLM model folder,
        load through :func:`pixellm.build.load_processor` (or ``from pixellm import
        PixelLMProcessor``), which registers ``"pixellm"`` with ``AutoConfig`` first (this layer
        does not import the model; without the registration transformers only warns)."""
        from transformers import AutoTokenizer

        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")
        tokenizer = AutoTokenizer.from_pretrained(str(root))
        if (root / IMAGE_PROCESSOR_FILE).is_file():
            image_processor = PixelLMImageProcessor.from_pretrained(root)
        else:
            logger.warning("%s: no %s, using the released image preprocessing", root, IMAGE_PROCESSOR_FILE)
            image_processor = PixelLMImageProcessor()
        cfg: dict[str, Any] = {}
        path = root / PROCESSOR_FILE
        if path.is_file():
            cfg = read_config_json(path)
        else:
            logger.warning("%s: no %s, using the released processor settings", root, PROCESSOR_FILE)
        return cls(tokenizer, image_processor, **{k: cfg[k] for k in _CONFIG_KEYS if k in cfg})
