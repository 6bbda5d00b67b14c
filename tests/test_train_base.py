"""Training from real base weights (docs/training.md): ``configs/pixellm-7b.yaml`` pointed at tiny
local stand-ins of its two base folders.

- CLIP: ``CLIPVisionModel.save_pretrained`` at a small size (12 layers, so layers -2 and -11
  exist; a 4 x 4 native grid run at 8 x 8, so the position table is interpolated).
- LLaVA: LLaMA weights plus LLaVA's linear ``model.mm_projector`` under ``model_type: "llava"``,
  fp16 ``.bin`` shards with an index and the rotary ``inv_freq`` buffers, as LLaVA-Lightning was
  saved; the tokenizer without PixelLM's tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from pixellm.build import tiny_tokenizer
from pixellm.cli import main
from pixellm.errors import DataError
from pixellm.train.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pixellm-7b.yaml"
CLIP_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=12, num_attention_heads=2,
                   patch_size=14, image_size=56)
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=512)
# Shrink the 7B recipe's pixel modules and input: 112 px (8 x 8 patches), 4 x 4 LLM image tokens.
SHRINK = "model_overrides={image_size: 112, llm_image_grid: 4, decoder_dim: 32, decoder_heads: 4, decoder_mlp_dim: 64}"


def write_llava(root: Path, projector: dict[str, torch.Tensor] | None = None, fmt: str = "bin",
                seed: int = 0) -> dict[str, torch.Tensor]:
    """A LLaVA-layout folder; returns the LLaMA tensors written (fp16)."""
    root.mkdir(parents=True)
    tok = tiny_tokenizer()
    tok.save_pretrained(root)
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **LLAMA))
    state = {k: v.to(torch.float16) for k, v in llama.state_dict().items()}
    extra = dict(projector) if projector is not None else {
        "model.mm_projector.weight": torch.randn(LLAMA["hidden_size"], CLIP_VISION["hidden_size"]).half(),
        "model.mm_projector.bias": torch.randn(LLAMA["hidden_size"]).half(),
    }
    head = LLAMA["hidden_size"] // LLAMA["num_attention_heads"]
    for i in range(LLAMA["num_hidden_layers"]):
        extra[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, head, 2) / head)
    everything = {**state, **extra}
    keys = sorted(everything)
    if fmt == "bin":
        names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
        index = "pytorch_model.bin.index.json"
    else:
        names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        index = "model.safetensors.index.json"
    weight_map = {}
    for name, part in zip(names, (keys[: len(keys) // 2], keys[len(keys) // 2:])):
        tensors = {k: everything[k].contiguous() for k in part}
        torch.save(tensors, root / name) if fmt == "bin" else save_file(tensors, root / name)
        weight_map.update(dict.fromkeys(part, name))
    (root / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "vocab_size": len(tok), **LLAMA,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float16",
        "mm_hidden_size": CLIP_VISION["hidden_size"], "mm_vision_select_layer": -2, "mm_use_im_start_end": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14", "use_mm_proj": True, "transformers_version": "4.28.0.dev0",
    }))
    return state


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from pixellm.data.synth import write_synth

    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(1)
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION))
    clip.save_pretrained(root / "clip")
    llama = write_llava(root / "llava")
    write_synth(root / "data", {"train": 4}, seed=3)
    return {"root": root, "clip": root / "clip", "llava": root / "llava", "clip_state": clip.state_dict(),
            "llama": llama, "data": root / "data" / "train.json"}


def overrides(bases, out: Path, *extra: str) -> list[str]:
    return [f"base_llm={bases['llava']}", f"vision_weights={bases['clip']}", SHRINK,
            f"data=[{{name: synth, kind: synth, path: {bases['data']}}}]", "val_data=null",
            "steps=2", "batch_size=1", "effective_batch=2", "num_workers=0", "optim.warmup_steps=0",
            "max_length=160", "tensorboard=false", "progress=false", f"output_dir={out}", *extra]


def canonical(name: str) -> str:
    """Our LLM parameter name -> the base checkpoint's (peft wraps LoRA targets in base_layer)."""
    return name.replace(".base_layer", "")


def test_base_weights_are_loaded_and_lora_applied(bases, tmp_path, caplog):
    from pixellm.train.setup import build_model

    cfg = load_config(CONFIG, overrides(bases, tmp_path / "run"))
    assert cfg.preset == "pixellm-7b" and cfg.lora.enabled
    with caplog.at_level("INFO", logger="pixellm.train.base"):
        model, processor = build_model(cfg)
    assert "linear mm_projector does not fit" in caplog.text
    # The LLM and CLIP are the stand-ins' weights (fp16 values upcast), not a fresh init.
    base = bases["llama"]
    seen = set()
    for name, p in model.language_model.named_parameters():
        if "lora_" in name:
            continue
        key = canonical(name)
        if key in ("model.embed_tokens.weight", "lm_head.weight"):  # grown by the 8 new tokens
            assert torch.equal(p[: base[key].shape[0]], base[key].float()), key
            assert p.shape[0] == len(processor.tokenizer) == base[key].shape[0] + 8
        else:
            assert torch.equal(p, base[key].float()), key
        seen.add(key)
    assert seen == set(base)
    for key, value in bases["clip_state"].items():
        assert torch.equal(model.vision_tower.state_dict()[key], value), key
    assert model.config.vision_config.num_hidden_layers == 12 and model.config.pos_interpolation == "released"
    assert model.config.text_config.num_hidden_layers == 2
    # LoRA on q_proj / v_proj, trainable; the base LLM and CLIP frozen.
    lora = {n for n, p in model.language_model.named_parameters() if "lora_" in n}
    assert lora and all((".q_proj." in n or ".v_proj." in n) for n in lora)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"language_model." + n for n in lora} <= trainable
    assert not any(n.startswith("vision_tower.") for n in trainable)
    assert not any(n.startswith("language_model.model.layers.") and "lora_" not in n for n in trainable)
    assert "mm_projector.0.weight" in trainable and "image_feature_neck.0.weight" in trainable


def test_train_7b_config_on_stand_ins_then_predict(bases, tmp_path, capsys):
    from pixellm.infer.generation import GenerationOptions
    from pixellm.infer.predictor import Predictor
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

    out = tmp_path / "run"
    assert main(["train", "--config", str(CONFIG), *overrides(bases, out)]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    final = PixelLMForCausalLM.from_pretrained(out / "final")
    assert not final.config.lora  # merged
    state = final.state_dict()
    # Frozen parts are bit-identical after training: CLIP and every LLM weight but the LoRA targets
    # (q_proj / v_proj now hold the merged update) and the trainable embeddings / lm_head.
    for key, value in bases["clip_state"].items():
        assert torch.equal(state["vision_tower." + key], value), key
    changed = []
    for key, value in bases["llama"].items():
        ours = state["language_model." + key]
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            continue
        if ".q_proj." in key or ".v_proj." in key:
            changed.append(not torch.equal(ours, value.float()))
        else:
            assert torch.equal(ours, value.float()), key
    assert any(changed)  # the LoRA update was trained and merged
    predictor = Predictor.from_pretrained(out / "final")
    image = torch.randint(0, 256, (50, 70, 3), dtype=torch.uint8).numpy()
    result = predictor(image, "Where is the red circle?", options=GenerationOptions(max_new_tokens=4))
    assert result.masks.shape[1:] == (50, 70) and len(result.token_ids) > 0


def test_pixellm_layout_projector_is_loaded(tmp_path):
    from pixellm.train.base import load_base_llm

    h, v = LLAMA["hidden_size"], CLIP_VISION["hidden_size"]
    proj = {"model.mm_projector.0.weight": torch.randn(2 * h, v), "model.mm_projector.0.bias": torch.randn(2 * h),
            "model.mm_projector.2.weight": torch.randn(h, 2 * h), "model.mm_projector.2.bias": torch.randn(h)}
    write_llava(tmp_path / "llava", projector=proj, fmt="safetensors")
    base = load_base_llm(tmp_path / "llava", v)
    assert set(base.projector) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert torch.equal(base.projector["2.weight"], proj["model.mm_projector.2.weight"])
    assert all("inv_freq" in k for k in base.skipped)


def test_bad_base_folders_are_one_line_errors(bases, tmp_path, capsys):
    from pixellm.train.base import load_base_llm

    def run(*extra: str) -> str:
        assert main(["train", "--config", str(CONFIG), *overrides(bases, tmp_path / "run"), *extra]) == 1
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("pixellm train: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err  # (other lines: loading progress bars)
        return lines[0]

    assert "nowhere: base_llm folder not found" in run(f"base_llm={tmp_path / 'nowhere'}")
    assert "nowhere: vision_weights folder not found" in run(f"vision_weights={tmp_path / 'nowhere'}")
    assert "CLIP key 'embeddings.class_embedding' is missing" in run(f"vision_weights={bases['llava']}")
    # a mis-shaped tensor: the error names the shard and the key
    h, v = LLAMA["hidden_size"], CLIP_VISION["hidden_size"]
    write_llava(tmp_path / "bad", fmt="safetensors")
    shard = next(f for f in sorted((tmp_path / "bad").glob("*.safetensors")))
    from safetensors.torch import load_file
    tensors = load_file(str(shard))
    key = sorted(k for k in tensors if k.endswith("mlp.up_proj.weight") or k.endswith("input_layernorm.weight"))[0]
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(shard))
    msg = run(f"base_llm={tmp_path / 'bad'}")
    assert shard.name in msg and repr(key) in msg and "(3, 3)" in msg
    # a missing tensor: named with the folder
    del tensors[key]
    save_file(tensors, str(shard))
    index = tmp_path / "bad" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"][key]
    index.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"{key!r} is missing"):
        load_base_llm(tmp_path / "bad", v)
    # a PixelLM-layout projector of the wrong width (a LLaVA-1.5 MLP): file and key named
    wrong = {"model.mm_projector.0.weight": torch.zeros(h, v), "model.mm_projector.0.bias": torch.zeros(h),
             "model.mm_projector.2.weight": torch.zeros(h, h), "model.mm_projector.2.bias": torch.zeros(h)}
    write_llava(tmp_path / "llava15", projector=wrong, fmt="safetensors")
    with pytest.raises(DataError, match=r"safetensors: key 'model.mm_projector.0.bias' has shape \(64,\), PixelLM's mm_projector.0.bias needs \(128,\)"):
        load_base_llm(tmp_path / "llava15", v)
    # a CLIP of another width than the LLaVA config records
    cfg = json.loads((bases["llava"] / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for f in bases["llava"].iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text(json.dumps({**cfg, "mm_hidden_size": 1024}))
    assert "mm_hidden_size 1024 != hidden size 16" in run(f"base_llm={other}")
