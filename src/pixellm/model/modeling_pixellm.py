"""``PixelLMForCausalLM``: CLIP + any HF causal LM + segmentation codebook + pixel decoder.

Flow of one forward pass (docs/architecture.md, "Model, as released"):

1. CLIP (frozen) -> selected hidden states ``L x [B, G*G, C_v]`` (padded patches masked).
2. Scale 0 resized to ``g x g`` -> ``mm_projector`` -> ``g*g`` LLM image tokens, placed where
   ``input_ids == image_token_index``.
3. Every scale -> ``out_mm_projector`` -> ``image_feature_neck`` -> decoder features
   ``[B, L, C, G, G]``.
4. LLM -> final (post-norm) hidden states; the state *before* each codebook token ->
   ``text_hidden_fcs`` -> token fusion -> one embedding per target and scale.
5. Pixel decoder -> per-scale masks -> mask fusion -> (optional detail path) -> resize to the
   padded input, crop the real image, resize to its original size.

``generate`` is the inference path: steps 1-3 once (or reused ``image_features``), the LLM's own
cached ``generate`` with the post-norm state of every new token, then steps 4-5 for each complete
codebook group of the answer (``decode_groups``, shared with ``forward``).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModel, PreTrainedModel
from transformers.utils import ModelOutput

from pixellm.conventions import find_codebook_groups, grid_valid_mask
from pixellm.errors import InputError
from pixellm.losses import dice_per_mask, mask_losses, refinement_bce_per_mask
from pixellm.model.codebook import TokenFusion, build_text_hidden_fcs
from pixellm.model.configuration_pixellm import PixelLMConfig
from pixellm.model.detail import PixelDetailPath
from pixellm.model.lora import inject_lora
from pixellm.model.mask_decoder import MaskFusion, MultiScaleMaskDecoder
from pixellm.model.projector import build_neck, build_projector
from pixellm.model.prompt_encoder import PromptEncoder
from pixellm.model.vision import FrozenVisionCache, clip_multiscale_features


def answer_start_weights(supervised: torch.Tensor, weight: float) -> torch.Tensor:
    """Per supervised token of ``supervised`` (bool ``B x T``, taken in row order): ``weight`` for
    the first token of each run of supervised positions (an answer's first word), 1 elsewhere."""
    starts = supervised & ~F.pad(supervised, (1, 0), value=False)[:, :-1]
    return torch.where(starts[supervised], weight, 1.0)


@dataclass
class PixelLMOutput(ModelOutput):
    """Output of ``PixelLMForCausalLM.forward``.

    Attributes:
        loss: ``ce_w * ce_loss + ref_w * ref_loss + dice_w * dice_loss`` (when labels are given).
        ce_loss, ref_loss, dice_loss: the parts (``mask_loss = ref_w*ref + dice_w*dice``).
        logits: ``B x T x V`` next-token logits.
        pred_masks: B tensors ``K_b x H_b x W_b`` of mask logits at each image's original size.
        seg_embeddings: ``K x L x C`` fused codebook embeddings of all targets of the batch.
        num_targets: ``K_b`` per sample.
    """

    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    ref_loss: torch.Tensor | None = None
    dice_loss: torch.Tensor | None = None
    mask_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pred_masks: list[torch.Tensor] | None = None
    seg_embeddings: torch.Tensor | None = None
    num_targets: list[int] | None = None


@dataclass
class PixelLMGenerateOutput(ModelOutput):
    """Output of ``PixelLMForCausalLM.generate``.

    Attributes:
        sequences: Long ``B x n``, the new tokens only (padded with ``pad_token_id`` after EOS).
        lengths: per sequence, the tokens before its first EOS (all ``n`` when there is none).
        pred_masks: per sequence, ``K_b x H_b x W_b`` mask logits at its image's original size,
            one per complete codebook group of ``sequences[b, :lengths[b]]``, in order.
        group_spans: per sequence, the ``(start, end)`` token spans of those groups.
        incomplete_groups: per sequence, codebook-token runs that are not a complete group
            (no mask; the released code drops *all* masks then).
        seg_embeddings: ``K x L x C`` fused codebook embeddings of all groups, in order.
    """

    sequences: torch.Tensor | None = None
    lengths: list[int] | None = None
    pred_masks: list[torch.Tensor] | None = None
    group_spans: list[list[tuple[int, int]]] | None = None
    incomplete_groups: list[int] | None = None
    seg_embeddings: torch.Tensor | None = None


@dataclass
class ImageFeatures:
    """One vision pass, shared by the LLM (``llm_tokens``) and the pixel decoder."""

    llm_tokens: torch.Tensor  # B x g*g x H
    decoder: torch.Tensor  # B x L x C x G x G
    detail: torch.Tensor | None  # B x D x S x S (detail path) or None
    resized_sizes: torch.Tensor  # B x 2
    original_sizes: torch.Tensor  # B x 2

    def all_full_size(self, size: int) -> bool:
        """Whether every image was resized to, and comes from, ``size x size`` (nothing to crop or
        resize back)."""
        return bool((self.resized_sizes == size).all()) and bool((self.original_sizes == size).all())

    def select(self, index: torch.Tensor | list[int]) -> ImageFeatures:
        index = torch.as_tensor(index, dtype=torch.long, device=self.decoder.device)
        return ImageFeatures(
            self.llm_tokens[index], self.decoder[index],
            None if self.detail is None else self.detail[index],
            self.resized_sizes[index.to(self.resized_sizes.device)],
            self.original_sizes[index.to(self.original_sizes.device)],
        )


class PixelLMPreTrainedModel(PreTrainedModel):
    config_class = PixelLMConfig
    config: PixelLMConfig
    base_model_prefix = "pixellm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CLIPEncoderLayer", "LlamaDecoderLayer", "Qwen2DecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # Our own modules keep PyTorch's default initialisation; the fusion weights start at
        # 1/N and 1/L (= the released model's fixed values). CLIP and the LLM are nested
        # PreTrainedModels and initialise themselves.
        if isinstance(module, (TokenFusion, MaskFusion)):
            module.reset_parameters()


class PixelLMForCausalLM(PixelLMPreTrainedModel):
    """PixelLM model. Non-LLM modules keep the released attribute names."""

    def __init__(self, config: PixelLMConfig) -> None:
        super().__init__(config)
        # transformers keeps configs by reference: give the sub-models their own copies.
        vision_config = copy.deepcopy(config.vision_config)
        text_config = copy.deepcopy(config.text_config)
        hidden, vision_dim, dim = text_config.hidden_size, vision_config.hidden_size, config.decoder_dim

        self.vision_tower = CLIPVisionModel(vision_config)
        llm_kwargs = {"attn_implementation": config.llm_attn_implementation} if config.llm_attn_implementation else {}
        self.language_model = AutoModelForCausalLM.from_config(text_config, **llm_kwargs)
        if config.lora:  # an unmerged LoRA checkpoint: rebuild its adapters before loading
            inject_lora(self.language_model, config.lora)
        self.mm_projector = build_projector(vision_dim, hidden, config.projector_hidden_act)
        self.out_mm_projector = build_projector(vision_dim, hidden, config.projector_hidden_act)
        self.image_feature_neck = build_neck(hidden, dim)
        self.text_hidden_fcs = build_text_hidden_fcs(hidden, dim)
        self.prompt_encoder = PromptEncoder(dim)
        self.mask_decoder = MultiScaleMaskDecoder(
            transformer_dim=dim,
            num_scales=config.num_scales,
            num_multimask_outputs=config.num_multimask_outputs,
            transformer_depth=config.decoder_depth,
            num_heads=config.decoder_heads,
            mlp_dim=config.decoder_mlp_dim,
            attention_downsample_rate=config.decoder_attention_downsample_rate,
            iou_head_hidden_dim=dim,
            readout=config.mask_readout,
        )
        self.token_fusion = TokenFusion(
            config.num_scales, config.num_tokens_per_scale, dim, mode=config.token_fusion,
            shared=config.shared_codebook, learnable=config.learnable_fusion_weights,
        )
        self.mask_fusion = MaskFusion(config.num_scales, learnable=config.learnable_fusion_weights)
        self.detail = (
            PixelDetailPath(
                config.pixel_detail_channels, dim,
                token_dim=config.vision_config.hidden_size if config.pixel_detail_from_tokens else None,
                patch_size=config.vision_config.patch_size, act=config.pixel_detail_act,
            )
            if config.pixel_detail_channels else None
        )
        # Set by the trainer while the tower is frozen (``TrainConfig.vision_cache_mb``); not saved.
        self.vision_cache: FrozenVisionCache | None = None
        self.post_init()

    # -- plumbing ----------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    @property
    def codebook_token_ids(self) -> list[int]:
        ids = self.config.codebook_token_ids
        if ids is None:
            raise InputError(
                "config.codebook_token_ids is not set: build the model with pixellm.build, which adds the "
                "codebook tokens to the tokenizer and records their ids"
            )
        return list(ids)

    # -- stage 1-3: one vision pass ------------------------------------------------------------
    def encode_images(
        self,
        pixel_values: torch.Tensor,
        resized_sizes: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        decoder_rows: list[int] | None = None,
    ) -> ImageFeatures:
        """Vision features for the LLM and the decoder from ``pixel_values`` ``B x 3 x S x S``.

        ``decoder_rows``: the images whose pixel-decoder features (neck, detail path) are needed;
        the other rows of ``decoder`` / ``detail`` are zeros, not computed (training: images with
        no target to decode, e.g. no-target or text-only answers). None: every image."""
        cfg = self.config
        s = cfg.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise InputError(f"pixel_values must be B x 3 x {s} x {s}, got {tuple(pixel_values.shape)}")
        b = pixel_values.shape[0]
        grid = cfg.vision_grid
        if resized_sizes is None:  # unpadded inputs: every patch is valid (and nothing is read,
            valid = None  # so the FLOP counter can run this on the meta device)
            resized_sizes = torch.tensor([[s, s]] * b, device=pixel_values.device)
        else:
            resized_sizes = resized_sizes.to(pixel_values.device).long()
            valid = grid_valid_mask(resized_sizes, s, grid)  # the processor's rule for CLIP patches
        original_sizes = resized_sizes if original_sizes is None else original_sizes.long()
        clip_features = clip_multiscale_features if self.vision_cache is None else self.vision_cache.features
        states = clip_features(self.vision_tower, pixel_values, valid, cfg.vision_select_layers, cfg.pos_interpolation)
        dtype = self.mm_projector[0].weight.dtype
        llm_tokens = self.mm_projector(self.llm_grid(states[0]).to(dtype))
        hidden = self.out_mm_projector[2].out_features
        rows = None if decoder_rows is None or len(decoder_rows) == b else torch.as_tensor(
            decoder_rows, dtype=torch.long, device=pixel_values.device)
        n = b if rows is None else len(rows)

        def needed(x: torch.Tensor) -> torch.Tensor:
            return x if rows is None else x[rows]

        decoder = torch.stack(
            [
                self.image_feature_neck(
                    self.out_mm_projector(needed(x).to(dtype)).transpose(1, 2).reshape(n, hidden, grid, grid)
                )
                for x in states
            ],
            dim=1,
        )
        detail = None
        if self.detail is not None:
            tokens = needed(states[0]).to(dtype) if cfg.pixel_detail_from_tokens else None
            detail = self.detail.features(needed(pixel_values).to(dtype), tokens)
        if rows is not None:  # back to one row per image; the rows not needed stay zero
            decoder = decoder.new_zeros((b, *decoder.shape[1:])).index_copy(0, rows, decoder)
            if detail is not None:
                detail = detail.new_zeros((b, *detail.shape[1:])).index_copy(0, rows, detail)
        return ImageFeatures(llm_tokens, decoder, detail, resized_sizes, original_sizes.to(resized_sizes.device))

    def llm_grid(self, patches: torch.Tensor) -> torch.Tensor:
        """The first selected layer's patches ``B x G*G x C_v`` resized (bilinear) to the LLM
        grid: ``B x g*g x C_v``, what ``mm_projector`` turns into the LLM's image tokens."""
        b, grid, g = patches.shape[0], self.config.vision_grid, self.config.llm_image_grid
        if g == grid:
            return patches
        coarse = patches.transpose(1, 2).reshape(b, -1, grid, grid).float()
        coarse = F.interpolate(coarse, size=(g, g), mode="bilinear", align_corners=False)
        return coarse.flatten(2).transpose(1, 2)

    def embed_inputs(self, input_ids: torch.Tensor, llm_tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by the image tokens."""
        is_image = input_ids == self.config.image_token_index
        counts = is_image.sum(1)
        n = self.config.num_image_tokens
        if bool((counts != n).any()):
            bad = int((counts != n).nonzero()[0, 0])
            raise InputError(
                f"sample {bad}: {int(counts[bad])} image placeholder tokens, expected {n} "
                f"(the processor expands <image> into {n} copies of {self.config.image_token_index})"
            )
        embeds = self.get_input_embeddings()(input_ids.clamp(min=0))
        embeds = embeds.masked_scatter(is_image[..., None], llm_tokens.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        return embeds

    @staticmethod
    def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """``cumsum(mask) - 1``: masked positions (padding, padded image cells) use no position;
        the same rule ``generate`` applies, so training and generation agree."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    # -- stage 4: codebook groups -> target embeddings ------------------------------------------
    def codebook_positions(
        self, input_ids: torch.Tensor, lengths: list[int] | None = None
    ) -> tuple[list[torch.Tensor], list[int]]:
        """Per sample, the positions of every complete codebook group (``K_b x N*L``), and the
        number of incomplete groups (runs that do not spell ``[SEG0]..[SEG{n-1}]`` in order).
        ``lengths``: read only the first ``lengths[b]`` tokens of sample b."""
        n = len(self.codebook_token_ids)
        groups, incomplete = [], []
        for b, row in enumerate(input_ids.tolist()):
            if lengths is not None:
                row = row[: lengths[b]]
            complete, fragments = find_codebook_groups(row, self.codebook_token_ids)
            groups.append(torch.tensor([list(range(s, e)) for s, e in complete], dtype=torch.long).reshape(-1, n))
            incomplete.append(len(fragments))
        return groups, incomplete

    def seg_embeddings(self, codebook_hidden: torch.Tensor) -> torch.Tensor:
        """``K x N*L x H`` hidden states (one row per codebook token) -> ``K x L x C``; ``K`` may
        be 0 (no targets: an empty ``0 x L x C`` tensor, the one fallback every path uses)."""
        if codebook_hidden.shape[0] == 0:
            return codebook_hidden.new_zeros((0, self.config.num_scales, self.config.decoder_dim))
        return self.token_fusion(self.text_hidden_fcs[0](codebook_hidden))

    def decode_groups(
        self, states: torch.Tensor, groups: list[torch.Tensor], features: ImageFeatures
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Masks of codebook groups: ``states`` ``B x T x H`` where ``states[b, t]`` is the
        final (post-norm) hidden state that predicts token t of sample b; ``groups[b]``
        ``K_b x N*L`` token positions (``codebook_positions``). Returns per-sample mask logits
        (``predict_masks``) and the ``K x L x C`` seg embeddings. ``forward`` and ``generate``
        both decode through here."""
        num = [int(g.shape[0]) for g in groups]
        image_index = torch.cat([torch.full((k,), i, dtype=torch.long) for i, k in enumerate(num)])
        rows = image_index.to(states.device)
        positions = torch.cat(groups).to(states.device)
        seg = self.seg_embeddings(states[rows[:, None], positions])  # K x N*L x H -> K x L x C
        return self.predict_masks(features, seg, image_index), seg

    # -- stage 5: masks ----------------------------------------------------------------------
    def decode_masks(
        self, decoder_features: torch.Tensor, seg_embeddings: torch.Tensor, detail: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pixel decoder for K targets: ``decoder_features`` ``K x L x C x G x G`` (each
        target's image), ``seg_embeddings`` ``K x L x C``, ``detail`` ``K x D x S x S`` (detail
        path) or None. Returns fused low-resolution mask logits ``K x 1 x 4G x 4G`` (float32) and
        the detail term ``K x 1 x S x S`` (or None), before any resizing."""
        grid = decoder_features.shape[-1]
        pe = self.prompt_encoder.get_dense_pe(grid, grid)
        dense = self.prompt_encoder.dense_embedding(grid, grid)
        # CPU bf16 autocast slows the decoder's many small attentions (docs/architecture.md,
        # "Measured choices"), so the decoder runs in fp32 on CPU; on accelerators autocast stays.
        on_cpu = decoder_features.device.type == "cpu"
        with torch.autocast("cpu", enabled=False) if on_cpu else contextlib.nullcontext():
            seg = seg_embeddings
            if on_cpu:
                decoder_features, seg = decoder_features.float(), seg.float()
            scale_masks = self.mask_decoder(decoder_features, seg.to(decoder_features.dtype), pe, dense)
            low = self.mask_fusion(scale_masks)[:, None].float()  # K x 1 x 4G x 4G
            detail_term = None
            if self.detail is not None:
                detail_term = self.detail(detail.float() if on_cpu else detail, seg[:, -1]).float()[:, None]
        return low, detail_term

    def predict_masks(
        self, features: ImageFeatures, seg_embeddings: torch.Tensor, image_index: torch.Tensor
    ) -> list[torch.Tensor]:
        """Mask logits for K targets: ``seg_embeddings`` ``K x L x C``; ``image_index`` ``[K]``
        says which image of ``features`` each target belongs to. Returns, per image, a
        ``K_b x H_b x W_b`` tensor at the image's original size."""
        b = features.decoder.shape[0]
        s = self.config.image_size
        image_index = image_index.to(features.decoder.device).long()
        out: list[torch.Tensor] = []
        if seg_embeddings.shape[0]:
            detail = features.detail[image_index] if self.detail is not None else None
            low, detail_term = self.decode_masks(features.decoder[image_index], seg_embeddings, detail)
            if features.all_full_size(s) and bool((image_index[1:] >= image_index[:-1]).all()):
                # Every image at S x S and the targets in image order (as decode_groups gives them):
                # the per-image steps below reduce to one resize and one split, the same numbers.
                m = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
                if detail_term is not None:
                    m = m + detail_term
                counts = torch.bincount(image_index, minlength=b).tolist()
                return list(m[:, 0].split(counts))
        for i in range(b):
            h, w = (int(v) for v in features.resized_sizes[i])
            oh, ow = (int(v) for v in features.original_sizes[i])
            sel = (image_index == i).nonzero()[:, 0]
            if not seg_embeddings.shape[0] or sel.numel() == 0:
                ref = features.decoder
                out.append(ref.new_zeros((0, oh, ow), dtype=torch.float32))
                continue
            # Released post-processing: resize to the longer resized side, crop the real image,
            # resize to the original size. The processor resizes the longest side to S, so the
            # first size is S for its inputs; callers' own resized sizes get the released rule.
            t = max(h, w)
            m = F.interpolate(low[sel], size=(t, t), mode="bilinear", align_corners=False)
            if detail_term is not None:
                d = detail_term[sel]
                m = m + (d if t == s else F.interpolate(d, size=(t, t), mode="bilinear", align_corners=False))
            m = m[:, 0, :h, :w]
            if (h, w) != (oh, ow):
                m = F.interpolate(m[:, None], size=(oh, ow), mode="bilinear", align_corners=False)[:, 0]
            out.append(m)
        return out

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        resized_sizes: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        gt_masks: list[torch.Tensor | None] | None = None,
        return_logits: bool = True,
        **kwargs,
    ) -> PixelLMOutput:
        """Teacher-forced pass: text loss, mask losses and predicted masks (batch contract in
        ``docs/architecture.md``). ``gt_masks[b]`` must have one mask per codebook group of
        sample b, in order of appearance, or be None: sample b is trained as text only (its
        groups are not decoded and it has no mask loss; ``DataSource.masks``).
        ``return_logits=False`` (training) applies the LM head only where labels are supervised:
        the full ``B x T x V`` logits are the largest tensor of a step and are not needed for
        the loss."""
        cfg = self.config
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be B x T, got {tuple(input_ids.shape)}")
        b = input_ids.shape[0]
        if pixel_values.shape[0] != b:
            raise InputError(f"pixel_values has {pixel_values.shape[0]} images for {b} sequences")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        groups, _ = self.codebook_positions(input_ids)
        if gt_masks is not None:
            if len(gt_masks) != b:
                raise InputError(f"gt_masks has {len(gt_masks)} entries for {b} samples")
            for i, (g, m) in enumerate(zip(groups, gt_masks)):
                if m is not None and (m.dim() != 3 or m.shape[0] != g.shape[0]):
                    raise InputError(
                        f"sample {i}: {g.shape[0]} codebook groups in input_ids but gt_masks has shape "
                        f"{tuple(m.shape)} (need {g.shape[0]} x H x W)"
                    )
            groups = [g if m is not None else g[:0] for g, m in zip(groups, gt_masks)]
        # The pixel decoder's features only for the images that have a group to decode.
        features = self.encode_images(pixel_values, resized_sizes, original_sizes,
                                      decoder_rows=[i for i, g in enumerate(groups) if g.shape[0]])
        embeds = self.embed_inputs(input_ids, features.llm_tokens)
        decoder = self.language_model.get_decoder()
        hidden = decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=self.position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        lm_head = self.get_output_embeddings()
        logits = lm_head(hidden) if return_logits or labels is None else None

        num_targets = [int(g.shape[0]) for g in groups]
        # The embedding of a codebook token is the hidden state that predicts it: position - 1.
        pred_masks, seg = self.decode_groups(hidden, [g - 1 for g in groups], features)

        out = PixelLMOutput(logits=logits, pred_masks=pred_masks, seg_embeddings=seg, num_targets=num_targets)
        if labels is not None:
            shift_labels = labels[:, 1:].to(hidden.device)
            supervised = shift_labels != -100
            if logits is not None:
                shift_logits = logits[:, :-1][supervised]
            else:
                shift_logits = lm_head(hidden[:, :-1][supervised])
            if not shift_logits.shape[0]:
                out.ce_loss = hidden.sum() * 0.0
            elif cfg.answer_start_loss_weight == 1.0:
                out.ce_loss = F.cross_entropy(shift_logits.float(), shift_labels[supervised])
            else:
                per_token = F.cross_entropy(shift_logits.float(), shift_labels[supervised], reduction="none")
                weights = answer_start_weights(supervised, cfg.answer_start_loss_weight).to(per_token.device)
                out.ce_loss = (per_token * weights).sum() / per_token.shape[0]
            out.loss = cfg.ce_loss_weight * out.ce_loss
        if gt_masks is not None:
            ref, dice = self.mask_loss_terms(pred_masks, gt_masks)
            out.ref_loss, out.dice_loss = ref, dice
            out.mask_loss = cfg.ref_loss_weight * ref + cfg.dice_loss_weight * dice
            out.loss = out.mask_loss if out.loss is None else out.loss + out.mask_loss
        return out

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        resized_sizes: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        **generate_kwargs,
    ) -> PixelLMGenerateOutput:
        """Answer left-padded prompts and decode a mask for every complete codebook group.

        Args:
            input_ids, attention_mask, pixel_values, resized_sizes, original_sizes: as for
                ``forward`` (the processor's inference batch: prompts ending "ASSISTANT:").
            image_features: ``encode_images`` output to reuse instead of ``pixel_values`` (one
                vision pass for several prompts about one image: ``Predictor.set_image``).
            generate_kwargs: passed to the language model's ``generate`` (``max_new_tokens``,
                ``do_sample``, ``temperature``, ``eos_token_id``, ``generation_config`` ...);
                defaults come from its ``generation_config``. Beam search is refused: the hidden
                states it reports do not follow the returned beams.

        One vision pass feeds the LLM and the pixel decoder; one cached ``generate`` call also
        returns, per new token, the final (post-norm) hidden state that predicted it
        (``output_hidden_states``): step 0 is the prefill, whose last position predicted new
        token 0; step ``t > 0`` holds the position that predicted new token ``t``. Those states
        are the codebook embeddings a teacher-forced ``forward`` computes (checked in
        ``tests/test_predictor.py``); the released code instead regenerates the whole answer
        without a cache to get them.
        """
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be B x T, got {tuple(input_ids.shape)}")
        b = input_ids.shape[0]
        if image_features is None:
            if pixel_values is None:
                raise InputError("generate needs pixel_values or image_features")
            if pixel_values.shape[0] != b:
                raise InputError(f"pixel_values has {pixel_values.shape[0]} images for {b} sequences")
            image_features = self.encode_images(pixel_values, resized_sizes, original_sizes)
        elif image_features.decoder.shape[0] != b:
            raise InputError(f"image_features has {image_features.decoder.shape[0]} images for {b} sequences")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        llm = self.language_model
        config = generate_kwargs.get("generation_config") or llm.generation_config
        if int(generate_kwargs.get("num_beams", getattr(config, "num_beams", 1) or 1)) > 1:
            raise InputError("beam search is not supported: its hidden states do not follow the returned beams")
        copies = int(generate_kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1) or 1))
        for key in ("output_hidden_states", "return_dict_in_generate"):
            generate_kwargs.pop(key, None)  # both are needed here
        generate_kwargs.setdefault("use_cache", True)
        # generate derives position ids as cumsum(mask) - 1, the rule forward uses.
        out = llm.generate(
            inputs_embeds=self.embed_inputs(input_ids, image_features.llm_tokens),
            attention_mask=attention_mask,
            output_hidden_states=True,
            return_dict_in_generate=True,
            **generate_kwargs,
        )
        sequences = out.sequences  # transformers 5: only the new tokens when given inputs_embeds
        steps = [out.hidden_states[0][-1][:, -1:]] + [h[-1][:, -1:] for h in out.hidden_states[1:]]
        states = torch.cat(steps, dim=1)[:, : sequences.shape[1]]  # states[b, t] predicted token t
        eos = generate_kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
        eos = set() if eos is None else {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}
        lengths = []
        for row in sequences.tolist():
            ends = [i for i, t in enumerate(row) if t in eos]
            lengths.append(ends[0] if ends else len(row))
        if copies > 1:  # num_return_sequences: rows b*copies .. b*copies+copies-1 share image b
            image_features = image_features.select(torch.arange(b).repeat_interleave(copies))
        groups, incomplete = self.codebook_positions(sequences, lengths)
        pred_masks, seg = self.decode_groups(states, groups, image_features)
        spans = [[(int(g[0]), int(g[-1]) + 1) for g in rows] for rows in groups]
        return PixelLMGenerateOutput(
            sequences=sequences, lengths=lengths, pred_masks=pred_masks, group_spans=spans,
            incomplete_groups=incomplete, seg_embeddings=seg,
        )

    def mask_loss_terms(
        self, pred_masks: list[torch.Tensor], gt_masks: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-refinement BCE and dice, averaged over all masks of the batch (one answer =
        one refinement group); samples with no predicted mask (no target, text only) add none."""
        preds, gts = [], []
        for pred, gt in zip(pred_masks, gt_masks):
            if pred.shape[0] == 0:
                continue
            gt = gt.to(pred.device, torch.float32)
            if gt.shape != pred.shape:
                raise InputError(f"gt mask shape {tuple(gt.shape)} != predicted {tuple(pred.shape)}")
            preds.append(pred)
            gts.append(gt)
        if not preds:
            # Keep the decoder in the graph (DDP expects every trainable parameter to get a grad).
            zero = sum(p.sum() for p in self.mask_decoder.parameters() if p.requires_grad) * 0.0
            return zero, zero
        alpha = self.config.refinement_alpha
        if len({tuple(p.shape[1:]) for p in preds}) == 1:
            # One size for all (the usual case): one call, the answers as refinement groups.
            losses = mask_losses(torch.cat(preds), torch.cat(gts), [p.shape[0] for p in preds], alpha=alpha)
            return losses["ref"], losses["dice"]
        refs = [refinement_bce_per_mask(p, g, [p.shape[0]], alpha=alpha) for p, g in zip(preds, gts)]
        return torch.cat(refs).mean(), torch.cat([dice_per_mask(p, g) for p, g in zip(preds, gts)]).mean()

    # -- training setup ------------------------------------------------------------------------
    def configure_trainable(self, train_embeddings: bool = True) -> None:
        """docs/training.md recipe: CLIP and the base LLM frozen; new embeddings/lm_head, projectors,
        text_hidden_fcs, neck, decoder, fusion weights (and LoRA, added by peft) trainable."""
        for p in self.parameters():
            p.requires_grad_(False)
        for module in (self.mm_projector, self.out_mm_projector, self.image_feature_neck,
                       self.text_hidden_fcs, self.mask_decoder, self.token_fusion, self.mask_fusion,
                       self.detail):
            if module is not None:
                for p in module.parameters():
                    p.requires_grad_(True)
        if not self.config.learnable_fusion_weights:
            for name, p in list(self.token_fusion.named_parameters()) + list(self.mask_fusion.named_parameters()):
                if name in ("weights", "gamma"):
                    p.requires_grad_(False)
        # The IoU head exists only for checkpoint compatibility and never runs.
        for p in self.mask_decoder.iou_prediction_head.parameters():
            p.requires_grad_(False)
        if train_embeddings:
            self.get_input_embeddings().weight.requires_grad_(True)
            self.get_output_embeddings().weight.requires_grad_(True)
        for name, p in self.language_model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
