"""convert-released on a synthetic released-layout folder at small sizes (released decoder sizes)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_batch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from pixellm.build import build_pixellm, tiny_tokenizer
from pixellm.cli import main
from pixellm.errors import ConfigError, DataError
from pixellm.model.configuration_pixellm import TINY_VOCAB_SIZE
from pixellm.model.modeling_pixellm import PixelLMForCausalLM
from pixellm.processing.processing_pixellm import PixelLMProcessor
from pixellm.tools.convert_released import convert_released

CLIP_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=12, num_attention_heads=2,
                   patch_size=14, image_size=28)
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=2048)


def _to_released_key(key: str) -> str:
    """Inverse of the importer's mapping: how the authors' checkpoint names our parameters."""
    if key.startswith("language_model.lm_head."):
        return key[len("language_model."):]
    if key.startswith("language_model.model."):
        return "model." + key[len("language_model.model."):]
    return "model." + key


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-style folder (sharded safetensors, LLaVA config, tokenizer), a CLIP folder
    and the reference model the folder was written from."""
    root = tmp_path_factory.mktemp("released")
    clip_dir, src = root / "clip", root / "hf_model"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=CLIP_VISION, text_config=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
    ))).save_pretrained(clip_dir)
    tok = tiny_tokenizer()
    # the one step (pixellm.build): the tokenizer gets the added tokens, the config their ids
    ref, _ = build_pixellm(
        "pixellm-7b", tok, text_config={"model_type": "llama", "vocab_size": TINY_VOCAB_SIZE, **LLAMA},
        vision_config={"model_type": "clip_vision_model", **CLIP_VISION},
    )
    ref.eval()
    tok.save_pretrained(src)
    vocab = len(tok)
    assert ref.config.text_config.vocab_size == vocab
    ref.vision_tower.load_state_dict(CLIPVisionModel.from_pretrained(clip_dir).state_dict())
    state = {_to_released_key(k): v.clone() for k, v in ref.state_dict().items()
             if not k.startswith(("vision_tower.", "token_fusion.", "mask_fusion."))}
    # Released extras the importer must drop: SAM prompt-encoder point / mask weights.
    state["model.prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 256)
    state["model.prompt_encoder.mask_downscaling.0.weight"] = torch.zeros(4, 1, 2, 2)
    keys = sorted(state)
    save_file({k: state[k] for k in keys[: len(keys) // 2]}, src / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[len(keys) // 2:]}, src / "model-00002-of-00002.safetensors")
    (src / "config.json").write_text(json.dumps({
        "architectures": ["PixelLMForCausalLM"], "model_type": "llava", "vocab_size": vocab, **LLAMA,
        "hidden_act": "silu", "mm_hidden_size": 16, "mm_use_im_start_end": True, "mm_vision_select_layer": -2,
        "vision_tower": "openai/clip-vit-large-patch14-336", "torch_dtype": "float32", "out_dim": 256,
    }))
    return {"src": src, "clip": clip_dir, "ref": ref, "state": state, "root": root}


def test_converted_model_equals_the_reference(released, tmp_path):
    out = tmp_path / "out"
    summary = convert_released(released["src"], str(released["clip"]), out)
    assert summary.weight_files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert summary.dropped_keys == ["model.prompt_encoder.mask_downscaling.0.weight",
                                    "model.prompt_encoder.point_embeddings.0.weight"]
    assert summary.initialised == ["mask_fusion.gamma", "token_fusion.weights"]
    model = PixelLMForCausalLM.from_pretrained(out).eval()
    assert model.config.pos_interpolation == "released"
    assert model.config.codebook_token_ids == released["ref"].config.codebook_token_ids
    ref_state = released["ref"].state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    # Same outputs as the reference model (fusion weights at 1/N and 1/L on both sides).
    batch = make_batch(model.config, targets=(2,), sizes=((50, 70),), resized=((320, 448),))
    with torch.no_grad():
        a, b = model(**batch), released["ref"](**batch)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.pred_masks[0], b.pred_masks[0])
    processor = PixelLMProcessor.from_pretrained(out)
    assert processor.codebook_token_ids == model.config.codebook_token_ids
    assert processor.image_processor.image_size == 448


def test_bin_shards_and_bfloat16_output(released, tmp_path):
    src = tmp_path / "bin_model"
    src.mkdir()
    for f in released["src"].iterdir():
        if f.suffix != ".safetensors":
            (src / f.name).write_bytes(f.read_bytes())
    torch.save({k: v.to(torch.bfloat16) for k, v in released["state"].items()}, src / "pytorch_model.bin")
    summary = convert_released(src, str(released["clip"]), tmp_path / "out", dtype="auto")
    assert summary.weight_files == ["pytorch_model.bin"] and summary.dtype == "bfloat16"
    model = PixelLMForCausalLM.from_pretrained(tmp_path / "out")
    w = released["ref"].mask_decoder.mask_tokens.weight
    assert torch.equal(model.mask_decoder.mask_tokens.weight.float(), w.to(torch.bfloat16).float())


def test_missing_key_and_wrong_clip_are_one_line_errors(released, tmp_path, capsys):
    src = tmp_path / "broken"
    src.mkdir()
    for f in released["src"].iterdir():
        if f.suffix != ".safetensors":
            (src / f.name).write_bytes(f.read_bytes())
    state = {k: v for k, v in released["state"].items() if "mask_decoder.level_embed" not in k}
    save_file(state, src / "model.safetensors")
    with pytest.raises(DataError, match="missing from released checkpoint"):
        convert_released(src, str(released["clip"]), tmp_path / "o1")

    cfg = json.loads((released["src"] / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "mm_hidden_size": 1024}))
    rc = main(["convert-released", "--src", str(src), "--vision", str(released["clip"]), "--out",
               str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "mm_hidden_size 1024" in err
    (src / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "hidden_size"}))
    with pytest.raises(DataError, match="config.json: missing or non-integer field 'hidden_size'"):
        convert_released(src, str(released["clip"]), tmp_path / "o3")


def test_cli_reports_conversion(released, tmp_path, capsys):
    rc = main(["convert-released", "--src", str(released["src"]), "--vision", str(released["clip"]),
               "--out", str(tmp_path / "o"), "--dtype", "float16"])
    out = capsys.readouterr().out
    assert rc == 0 and "dropped 2 unused" in out and "wrote float16 model" in out
    assert (tmp_path / "o" / "config.json").is_file()


def test_token_ids_without_tokenizer_files_and_a_tokenizer_too_large(released, tmp_path):
    """No tokenizer files: the added tokens end the checkpoint's vocabulary (the released layout),
    which here is where the tokenizer put them. A tokenizer larger than the checkpoint's
    vocabulary is a one-line error."""
    src = tmp_path / "no_tokenizer"
    src.mkdir()
    for f in released["src"].iterdir():
        if f.suffix == ".safetensors" or f.name == "config.json":
            (src / f.name).write_bytes(f.read_bytes())
    summary = convert_released(src, str(released["clip"]), tmp_path / "out")
    assert not summary.processor_saved
    config = PixelLMForCausalLM.from_pretrained(tmp_path / "out").config
    ref = released["ref"].config
    assert config.codebook_token_ids == ref.codebook_token_ids
    assert (config.im_start_token_id, config.im_end_token_id) == (ref.im_start_token_id, ref.im_end_token_id)

    grown = tmp_path / "grown"
    grown.mkdir()
    for f in src.iterdir():
        (grown / f.name).write_bytes(f.read_bytes())
    tok = PixelLMProcessor.from_pretrained(released["src"]).tokenizer
    tok.add_tokens(["[EXTRA]"])
    tok.save_pretrained(grown)
    with pytest.raises(ConfigError, match=r"tokenizer has \d+ tokens .* checkpoint's vocabulary is \d+"):
        convert_released(grown, str(released["clip"]), tmp_path / "out2")
