"""One home for the token and text conventions: every stage uses the same objects and rules."""

import pixellm.conventions as conv


def test_old_import_paths_are_the_same_objects():
    from pixellm.eval import predictions, rewrite
    from pixellm.infer import overlay
    from pixellm.processing import conversation, image_processing, tokenizer

    assert conversation.IGNORE_INDEX is conv.IGNORE_INDEX == -100
    assert conversation.IMAGE_TOKEN_INDEX is conv.IMAGE_TOKEN_INDEX == -200
    assert conversation.SEG_MARKER is overlay.SEG_MARKER is predictions.SEG_MARKER is conv.SEG_MARKER
    assert conversation.find_codebook_groups is conv.find_codebook_groups
    assert conversation.expand_seg is conv.expand_seg
    assert image_processing.grid_valid_mask is conv.grid_valid_mask
    assert tokenizer.codebook_token_strings is conv.codebook_token_strings
    assert rewrite.target_phrases is conv.target_phrases


def test_one_target_phrase_rule_for_overlay_and_judges():
    from pixellm.infer.overlay import target_names

    answer = "You can sit on the red chair [SEG] (next to the table [SEG]). The cat is [SEG]; [SEG] and this [SEG]"
    assert conv.target_phrases(answer) == ["red chair", "table", "cat", "", ""]
    assert target_names(answer) == ["red chair", "table", "cat", "target 4", "target 5"]


def test_model_does_not_import_processing():
    import ast
    import pathlib

    model_dir = pathlib.Path(conv.__file__).parent / "model"
    for path in model_dir.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert not [n.module for n in top if (n.module or "").startswith("pixellm.processing")], path

