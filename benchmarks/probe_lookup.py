"""Can the LLM's image tokens answer "is the named object there?", and does the LLM look?
(docs/training.md, "The demo", "What limits it").

1. An attention probe on the frozen image tokens: one attention layer whose query is a colour
   embedding plus a shape embedding (as a question names "the purple circle"), with keys and
   values from the 64 (or 16) image tokens and a learned sink, then a small MLP -> present or
   absent. Trained on the first ``--fit`` training images (one named category per example,
   present or absent with equal odds), scored on the held-out images plus ``--score`` further
   training images. Reported: held-out accuracy after 100, 300 and 1500 updates of 64, for the
   vision tower's grid features and for the checkpoint's projected tokens.
2. The trained LLM itself: at the position where it decides between "The ..." and "There is no
   ..." (the end of the prompt), the attention mass on the image tokens and the share of it on
   the most attended image token (1 for a sharp lookup, 1/tokens if spread evenly), per layer
   (mean over heads and over the held-out ``refer`` and ``absent`` questions).

    python benchmarks/probe_lookup.py demo_out
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_presence import tokens  # noqa: E402

from pixellm.data.synth import COLOURS, SHAPES  # noqa: E402
from pixellm.infer.predictor import Predictor  # noqa: E402

REPORT_AT = (100, 300, 1500)


class LookupProbe(torch.nn.Module):
    """One attention read of the image tokens with a colour + shape query and a sink."""

    def __init__(self, in_dim: int, dim: int = 64) -> None:
        super().__init__()
        self.colour = torch.nn.Embedding(len(COLOURS), dim)
        self.shape = torch.nn.Embedding(len(SHAPES), dim)
        self.key, self.value = torch.nn.Linear(in_dim, dim), torch.nn.Linear(in_dim, dim)
        self.sink_key, self.sink_value = torch.nn.Parameter(torch.zeros(dim)), torch.nn.Parameter(torch.zeros(dim))
        self.head = torch.nn.Sequential(torch.nn.Linear(2 * dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, 1))

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        # synthetic category_id - 1 = colour index * len(SHAPES) + shape index
        q = self.colour(category // len(SHAPES)) + self.shape(category % len(SHAPES))
        n, d = len(x), q.shape[-1]
        k = torch.cat([self.key(x), self.sink_key.expand(n, 1, d)], 1)
        v = torch.cat([self.value(x), self.sink_value.expand(n, 1, d)], 1)
        attn = torch.softmax((k @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(d), -1)
        read = (attn.unsqueeze(-1) * v).sum(1)
        return self.head(torch.cat([read, q], -1)).squeeze(-1)


def named_examples(labels: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``n`` (image, category, present) triples, present and absent with equal odds."""
    images = torch.randint(0, len(labels), (n,), generator=gen)
    want = (torch.rand(n, generator=gen) < 0.5).float()
    cats = torch.empty(n, dtype=torch.long)
    for k in range(n):
        options = torch.nonzero(labels[images[k]] == want[k]).flatten()
        cats[k] = options[torch.randint(0, len(options), (1,), generator=gen)]
    return images, cats, want


def attention_probe(x_fit: torch.Tensor, y_fit: torch.Tensor, x_score: torch.Tensor, y_score: torch.Tensor) -> dict:
    torch.manual_seed(0)
    mu, sd = x_fit.mean((0, 1)), x_fit.std((0, 1)) + 1e-6
    x_fit, x_score = (x_fit - mu) / sd, (x_score - mu) / sd
    probe = LookupProbe(x_fit.shape[-1])
    opt = torch.optim.Adam(probe.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    s_img, s_cat, s_y = named_examples(y_score, 4000, torch.Generator().manual_seed(1))
    out = {}
    for step in range(1, max(REPORT_AT) + 1):
        img, cat, y = named_examples(y_fit, 64, gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(x_fit[img], cat), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in REPORT_AT:
            with torch.no_grad():
                right = (probe(x_score[s_img], s_cat) > 0).float() == s_y
            out[f"accuracy_after_{step}"] = round(right.float().mean().item(), 3)
    return out


def llm_attention(pred: Predictor, data: Path, records: list[dict]) -> dict:
    """Image attention at the last prompt position, per layer, for refer / absent questions."""
    model, proc = pred.model, pred.processor
    model.language_model.config._attn_implementation = "eager"  # returns attention weights
    rows: dict[str, list[torch.Tensor]] = {"refer": [], "absent": []}
    for rec in records:
        image = Image.open(data / rec["file_name"]).convert("RGB")
        for question, kind in zip(rec["questions"], rec.get("question_kinds", [])):
            if kind not in rows:
                continue
            ex = proc.encode_example(image, question)
            ids, mask = ex["input_ids"][None], ex["attention_mask"][None]
            with torch.no_grad():
                feats = model.encode_images(ex["pixel_values"][None], ex["resized_size"][None], ex["original_size"][None])
                out = model.language_model.get_decoder()(
                    inputs_embeds=model.embed_inputs(ids, feats.llm_tokens), attention_mask=mask,
                    position_ids=model.position_ids_from_mask(mask), output_attentions=True, use_cache=False)
            is_image = ids[0] == proc.image_token_index
            last = torch.stack([a[0, :, -1][:, is_image] for a in out.attentions])  # layers x heads x image
            mass = last.sum(-1)
            rows[kind].append(torch.stack([mass.mean(-1), (last.max(-1).values / mass.clamp_min(1e-9)).mean(-1)]))
    return {kind: {"questions": len(r),
                   "image_attention_mass_per_layer": [round(v, 3) for v in torch.stack(r).mean(0)[0].tolist()],
                   "largest_token_share_of_image_attention_per_layer":
                       [round(v, 3) for v in torch.stack(r).mean(0)[1].tolist()],
                   "share_if_uniform": round(1 / int(is_image.sum()), 4)}
            for kind, r in rows.items() if r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo_dir", type=Path, help="a pixellm demo output folder (data/ and checkpoint/)")
    ap.add_argument("--fit", type=int, default=3000)
    ap.add_argument("--score", type=int, default=500)
    args = ap.parse_args()
    data = args.demo_dir / "data"
    pred = Predictor.from_pretrained(args.demo_dir / "checkpoint")
    train = json.loads((data / "train.json").read_text(encoding="utf-8"))
    val = json.loads((data / "val.json").read_text(encoding="utf-8"))
    raw_fit, proj_fit, y_fit = tokens(pred, data, train[:args.fit])
    raw_sc, proj_sc, y_sc = tokens(pred, data, val + train[args.fit:args.fit + args.score])
    result = {
        "attention_probe": {"tower": attention_probe(raw_fit, y_fit, raw_sc, y_sc),
                            "projected": attention_probe(proj_fit, y_fit, proj_sc, y_sc)},
        "llm_at_decision_position": llm_attention(pred, data, val),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
