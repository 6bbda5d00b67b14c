"""Pictures and text of a prediction: every target in its own colour, in the image and in the
answer (the words before each ``[SEG]`` name the target: ``pixellm.conventions.target_phrases``)."""

from __future__ import annotations

import html

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pixellm.conventions import SEG_MARKER, target_phrases

# Distinct, colour-blind-friendly hues (Okabe-Ito + Tableau), cycled for more targets.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (148, 103, 189), (140, 86, 75), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
def colour(index: int) -> tuple[int, int, int]:
    """RGB colour of target ``index`` (0-based)."""
    return PALETTE[index % len(PALETTE)]


def hex_colour(index: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour(index))


def split_answer(answer: str) -> tuple[list[str], list[str]]:
    """``answer`` -> (text pieces, target names): ``pieces[i]`` precedes marker i (the last piece
    follows the last marker); ``names[i]`` = ``target_phrases(answer)[i]``
    (``"You can sit on the chair [SEG]"`` -> ``"chair"``), or ``"target i+1"`` when empty."""
    names = [p or f"target {i + 1}" for i, p in enumerate(target_phrases(answer))]
    return answer.split(SEG_MARKER), names


def target_names(answer: str) -> list[str]:
    """One short name per ``[SEG]`` marker, in order."""
    return split_answer(answer)[1]


def render_overlay(
    image: Image.Image | np.ndarray,
    masks: np.ndarray,
    labels: list[str] | None = None,
    alpha: float = 0.5,
    legend: bool = True,
) -> Image.Image:
    """Blend mask ``i`` (bool ``[K, H, W]`` at the image's size) in ``colour(i)`` over the image,
    outline it, and add a legend strip below (swatch + ``labels[i]``)."""
    base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if base.ndim != 3 or masks.ndim != 3 or masks.shape[1:] != base.shape[:2]:
        raise ValueError(f"masks {masks.shape} do not match the image {base.shape[:2]}")
    out = base.copy()
    for i, m in enumerate(masks.astype(bool)):
        c = np.asarray(colour(i), dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * c
        edge = m & ~_erode(m)
        out[edge] = c
    picture = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if not legend or not len(masks):
        return picture
    labels = labels if labels is not None else [f"target {i + 1}" for i in range(len(masks))]
    return _with_legend(picture, [f"{i + 1}. {t}" for i, t in enumerate(labels)])


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion (so ``mask & ~erode`` is a one-pixel outline)."""
    p = np.pad(mask, 1, constant_values=False)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _with_legend(picture: Image.Image, entries: list[str]) -> Image.Image:
    font = ImageFont.load_default()
    row, pad = 16, 4
    probe = ImageDraw.Draw(picture)
    text_w = max(int(probe.textlength(e, font=font)) for e in entries)
    width = max(picture.width, text_w + row + 3 * pad)
    canvas = Image.new("RGB", (width, picture.height + len(entries) * row + 2 * pad), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, entry in enumerate(entries):
        y = picture.height + pad + i * row
        draw.rectangle([pad, y + 2, pad + row - 4, y + row - 2], fill=colour(i))
        draw.text((row + 2 * pad, y + 2), entry, fill=(0, 0, 0), font=font)
    return canvas


def answer_html(answer: str) -> str:
    """The answer as HTML: each target's name (the words before its ``[SEG]``) in its colour,
    followed by a numbered swatch where the marker was."""
    pieces, names = split_answer(answer)
    out = []
    for i, (piece, name) in enumerate(zip(pieces, names)):
        col = hex_colour(i)
        head, sep, tail = piece.rpartition(name) if name in piece else (piece, "", "")
        out.append(html.escape(head))
        if sep:
            out.append(f'<span class="pixellm-target" data-target="{i}" style="color:{col};font-weight:bold">'
                       f"{html.escape(name)}</span>")
        out.append(html.escape(tail))
        out.append(f'<span class="pixellm-seg" style="background:{col};color:#fff;border-radius:3px;'
                   f'padding:0 3px">{i + 1}</span>')
    out.append(html.escape(pieces[-1]))
    return "".join(out)
