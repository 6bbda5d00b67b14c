"""Gradio web demo: upload an image, ask a question, see every target's mask in its own colour
over the image and the answer with the target names in the same colours.

Uploads go through :func:`check_upload` (size in bytes, decodable image, pixel count) so an
oversized, corrupt or non-image file gets a clear message and the server keeps serving. Requests
run one at a time (the model is shared).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from pixellm.errors import InputError, PixelLMError
from pixellm.infer.overlay import answer_html, render_overlay, target_names

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = None  # the shared limit (image_processing.max_image_pixels)
CSS = ".pixellm-answer {font-size: 1.1em} .pixellm-error {color: #b00020; font-weight: bold}"


def check_upload(path: str | os.PathLike | None, max_upload_mb: float, max_pixels: int | None = None) -> Image.Image:
    """The uploaded file as an RGB image, or ``InputError`` with a message for the user.

    Decoded by the loader every command uses (``load_image``: pixel limit from the header,
    16-bit / palette / CMYK modes, EXIF orientation)."""
    from pixellm.errors import DataError
    from pixellm.processing.image_processing import ImageTooLarge, load_image

    if not path:
        raise InputError("please upload an image first")
    path = Path(path)
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_upload_mb:
        raise InputError(f"the file is too large ({size_mb:.1f} MB; the limit is {max_upload_mb:g} MB)")
    try:
        return load_image(path, max_pixels)
    except ImageTooLarge as err:
        raise InputError(f"the {str(err).split(': ', 1)[-1]}") from err
    except DataError as err:
        reason = str(err).rsplit("(", 1)[-1].split(":")[0].rstrip(")")
        raise InputError(f"{path.name} is not a readable image ({reason})") from err


def answer_request(
    predictor: Any, file: str | None, question: str, max_upload_mb: float, max_pixels: int | None
) -> tuple[Image.Image | None, str, str]:
    """One request -> (overlay picture, answer HTML, status HTML). Never raises for user errors."""
    import html

    try:
        image = check_upload(file, max_upload_mb, max_pixels)
        if not question or not question.strip():
            raise InputError("please type a question")
        result = predictor(image, question)
    except PixelLMError as err:
        return None, "", f'<div class="pixellm-status pixellm-error">Error: {html.escape(str(err))}</div>'
    picture = render_overlay(image, result.masks, target_names(result.answer))
    status = f"{result.num_masks} target(s)"
    if result.incomplete_groups:
        status += f", {result.incomplete_groups} incomplete group(s) dropped"
    return (picture, f'<div class="pixellm-answer">{answer_html(result.answer)}</div>',
            f'<div class="pixellm-status">{html.escape(status)}</div>')


def build_app(predictor: Any, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """The ``gr.Blocks`` app (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with gr.Blocks(title="PixelLM") as app:
        gr.Markdown("# PixelLM\nUpload an image and ask a question; every target gets its own mask and colour.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="upload")
                question = gr.Textbox(label="Question", placeholder="Where can I sit?", elem_id="question")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                overlay = gr.Image(label="Targets", type="pil", format="png", interactive=False, elem_id="overlay")
                answer = gr.HTML(elem_id="answer")
                status = gr.HTML(elem_id="status")

        def handle(file: str | None, text: str) -> tuple[Any, str, str]:
            return answer_request(predictor, file, text, max_upload_mb, max_pixels)

        for trigger in (ask.click, question.submit):
            trigger(handle, inputs=[upload, question], outputs=[overlay, answer, status],
                    concurrency_limit=1)
    return app


def serve(
    model: str | os.PathLike | Any,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> None:
    """Load the model (a folder or a ``Predictor``) and serve the demo until interrupted."""
    if isinstance(model, str | os.PathLike):
        from pixellm.infer.predictor import Predictor

        model = Predictor.from_pretrained(model)
    app = build_app(model, max_upload_mb, max_pixels)
    # gradio's own hard limit sits above ours so that our clearer message is what users see
    app.queue().launch(
        server_name=host, server_port=port, max_file_size=f"{int(4 * max_upload_mb) + 1}mb",
        show_error=True, ssr_mode=False, quiet=False, css=CSS,
    )
