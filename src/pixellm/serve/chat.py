"""Terminal chat: multi-turn questions about one image, answers with numbered targets.

Commands: ``/image PATH`` (load an image; starts a new conversation), ``/reset`` (forget the
conversation), ``/save DIR`` (overlay.png + prediction.json of the last answer), ``/help``,
``/quit`` (or end of input). A bad image or question prints a message and the chat goes on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from PIL import Image

from pixellm.errors import PixelLMError
from pixellm.infer.overlay import target_names
from pixellm.processing.image_processing import load_image

HELP = "commands: /image PATH, /reset, /save DIR, /help, /quit; anything else is a question"


@dataclass
class ChatSession:
    """State of one conversation: the image (also set in the predictor, whose ``set_image``
    keeps its vision features for every turn), earlier (question, answer) turns, the last result."""

    predictor: Any
    image: Image.Image | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    last: Any = None

    def set_image(self, path: str) -> str:
        image = load_image(path)
        self.predictor.set_image(image)  # one vision pass for every question about it
        self.image = image
        self.history.clear()
        self.last = None
        return f"image {path} ({self.image.width}x{self.image.height}); new conversation"

    def reset(self) -> str:
        self.history.clear()
        self.last = None
        return "conversation cleared"

    def ask(self, question: str) -> str:
        if self.image is None:
            return "no image yet: load one with /image PATH"
        result = self.predictor.ask(question, history=self.history)
        self.history.append((result.question, result.answer))
        self.last = result
        return format_answer(result)

    def save(self, out_dir: str) -> str:
        from pixellm.infer.outputs import write_prediction

        if self.last is None or self.image is None:
            return "nothing to save yet"
        paths = write_prediction(self.last, self.image, out_dir)
        return f"saved {paths['overlay']} and {paths['prediction']}"


def format_answer(result: Any) -> str:
    """Answer text, then one line per target: number, name, mask area."""
    lines = [result.answer]
    for i, (name, mask) in enumerate(zip(target_names(result.answer), result.masks)):
        lines.append(f"  [{i + 1}] {name}: {int(mask.sum())} px ({100.0 * mask.mean():.1f}% of the image)")
    if result.incomplete_groups:
        lines.append(f"  ({result.incomplete_groups} incomplete target group(s) dropped)")
    return "\n".join(lines)


def run_chat(predictor: Any, image: str | None = None, stdin: TextIO | None = None,
             stdout: TextIO | None = None) -> int:
    """Read lines from ``stdin`` until ``/quit`` or end of input; print answers to ``stdout``."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    session = ChatSession(predictor)
    interactive = stdin.isatty()

    def say(text: str) -> None:
        print(text, file=stdout, flush=True)

    say(HELP)
    if image:
        say(_guard(session.set_image, image))
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        cmd, _, arg = line.partition(" ")
        if cmd in ("/quit", "/exit"):
            break
        if cmd == "/help":
            say(HELP)
        elif cmd == "/reset":
            say(session.reset())
        elif cmd == "/image":
            say(_guard(session.set_image, arg.strip()) if arg.strip() else "usage: /image PATH")
        elif cmd == "/save":
            say(_guard(session.save, arg.strip()) if arg.strip() else "usage: /save DIR")
        elif cmd.startswith("/"):
            say(f"unknown command {cmd}; {HELP}")
        else:
            say(_guard(session.ask, line))
    say("bye")
    return 0


def _guard(action: Any, arg: str) -> str:
    """Run a chat action; user errors become a message instead of ending the chat."""
    try:
        return action(arg)
    except (PixelLMError, OSError, ValueError) as err:
        return f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
