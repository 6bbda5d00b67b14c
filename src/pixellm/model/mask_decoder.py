"""PixelLM's multi-scale pixel decoder (Algorithm 1 of the supplement), in the released layout.

One SAM-style two-way transformer per scale, coarse to fine. Scale 0 decodes the coarse feature map;
every later scale decodes a 2x upsampled finer feature map that is first re-weighted by the previous
scale's mask ("feature update"). The caller fuses the per-scale masks (learnable gamma); this module
only returns them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixellm.errors import InputError
from pixellm.model.common import MLP, LayerNorm2d
from pixellm.model.prompt_encoder import PositionEmbeddingRandom
from pixellm.model.transformer import TwoWayTransformer

READOUTS = ("first", "mean")


class MultiScaleMaskDecoder(nn.Module):
    """Decodes one mask per target and scale from per-scale image features and seg embeddings.

    Args:
        transformer_dim: channel dimension C of features, tokens and seg embeddings.
        num_scales: number of scales L (one transformer each).
        num_multimask_outputs: SAM's multimask outputs; there are `num_multimask_outputs + 1` mask tokens.
        transformer_depth, num_heads, mlp_dim, attention_downsample_rate: two-way transformer sizes.
        iou_head_depth, iou_head_hidden_dim: sizes of the IoU head (kept for checkpoint compatibility;
            never run).
        readout: per-scale mask, "first" = mask token 0 (released model) or "mean" = mean over all mask
            tokens (literal Algorithm 1).
    """

    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        num_scales: int = 2,
        num_multimask_outputs: int = 3,
        transformer_depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        readout: str = "first",
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        if transformer_dim % 8 != 0:
            raise ValueError(f"transformer_dim must be a multiple of 8, got {transformer_dim}")
        c = transformer_dim
        self.transformer_dim = c
        self.num_scales = num_scales
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.readout = readout

        self.transformer = nn.ModuleList(
            TwoWayTransformer(
                depth=transformer_depth,
                embedding_dim=c,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
            )
            for _ in range(num_scales)
        )
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.level_embed = nn.Embedding(num_scales, c)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 8, kernel_size=2, stride=2), LayerNorm2d(c // 8), nn.GELU()
        )
        self.upsample_2x = nn.Sequential(
            nn.ConvTranspose2d(c, c, kernel_size=2, stride=2), LayerNorm2d(c), nn.GELU()
        )
        self.pe1 = PositionEmbeddingRandom(c // 2)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        # Unused at run time; present so that the released weights load with no unexpected keys.
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_features: torch.Tensor,
        seg_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_embedding: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Decode the per-scale masks of T targets.

        Args:
            image_features: [T, L, C, h, w] neck features of each target's image (may be an expanded
                view of [1, L, C, h, w]); scale 0 is the coarse stage.
            seg_embeddings: [T, L, C] fused codebook embedding per target and scale.
            image_pe: [1, C, h, w] positional encoding of the h x w grid (`PromptEncoder.get_dense_pe`).
            dense_embedding: [1, C, h, w] dense prompt (`PromptEncoder.dense_embedding`).

        Returns:
            L mask-logit tensors: scale 0 is [T, 2h, 2w], every scale l > 0 is [T, 4h, 4w].
        """
        self._check_inputs(image_features, seg_embeddings, image_pe, dense_embedding)
        outputs: list[torch.Tensor] = []
        previous: torch.Tensor | None = None
        for level in range(self.num_scales):
            feature = image_features[:, level]  # T x C x h x w
            if previous is None:
                src = feature + dense_embedding
                pe = image_pe
            else:
                src = self._upsample(feature)  # T x C x 2h x 2w
                size = src.shape[-2:]
                if previous.shape[-2:] != size:
                    previous = F.interpolate(previous[:, None], size=size, mode="bilinear", align_corners=False)[
                        :, 0
                    ]
                # Feature update of Algorithm 1: emphasise where the previous scale found the target.
                src = src * (torch.sigmoid(previous)[:, None] + 1)
                pe = self.pe1(tuple(size)).unsqueeze(0)
                src = src + F.interpolate(dense_embedding, size=size, mode="bilinear", align_corners=False)
            masks = self._predict_masks(level, src, pe.to(src.dtype), seg_embeddings[:, level])
            # The released model feeds its read-out (token 0) mask to the next scale, so the feature
            # update follows the readout too.
            previous = masks[:, 0] if self.readout == "first" else masks.mean(dim=1)
            outputs.append(previous)
        return outputs

    def _upsample(self, feature: torch.Tensor) -> torch.Tensor:
        """upsample_2x: [T, C, h, w] -> [T, C, 2h, 2w]; computed once when targets share one image."""
        if feature.shape[0] > 1 and feature.stride(0) == 0:
            # An expanded view holds one image for all targets: upsample it once, expand the result.
            return self.upsample_2x(feature[:1]).expand(feature.shape[0], -1, -1, -1)
        return self.upsample_2x(feature)

    def _predict_masks(
        self, level: int, src: torch.Tensor, pe: torch.Tensor, seg_embedding: torch.Tensor
    ) -> torch.Tensor:
        """SAM's mask prediction at one scale.

        src: [T, C, H, W]; pe: [1, C, H, W]; seg_embedding: [T, C] -> masks [T, num_mask_tokens, 2H, 2W].
        """
        t, c, h, w = src.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(t, -1, -1), seg_embedding[:, None]], dim=1)
        tokens = tokens + self.level_embed.weight[level]  # T x (2 + num_mask_tokens) x C

        hs, keys = self.transformer[level](src, pe, tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]  # T x M x C
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(t, c, h, w))  # T x C/8 x 2H x 2W
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # T x M x C/8
        _, c8, h2, w2 = upscaled.shape
        return (hyper_in @ upscaled.reshape(t, c8, h2 * w2)).reshape(t, self.num_mask_tokens, h2, w2)

    def _check_inputs(
        self,
        image_features: torch.Tensor,
        seg_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_embedding: torch.Tensor,
    ) -> None:
        c, n = self.transformer_dim, self.num_scales
        if image_features.dim() != 5 or image_features.shape[1:3] != (n, c):
            raise InputError(
                f"image_features must be [T, {n}, {c}, h, w], got {list(image_features.shape)}"
            )
        t, _, _, h, w = image_features.shape
        if seg_embeddings.shape != (t, n, c):
            raise InputError(f"seg_embeddings must be [{t}, {n}, {c}], got {list(seg_embeddings.shape)}")
        for name, tensor in (("image_pe", image_pe), ("dense_embedding", dense_embedding)):
            if tensor.shape != (1, c, h, w):
                raise InputError(f"{name} must be [1, {c}, {h}, {w}], got {list(tensor.shape)}")


class MaskFusion(nn.Module):
    """``final = sum_l gamma_l * resize(mask_l)`` with ``gamma`` initialised to 1/L."""

    def __init__(self, num_scales: int, learnable: bool = True) -> None:
        super().__init__()
        self.num_scales = num_scales
        self.gamma = nn.Parameter(torch.full((num_scales,), 1.0 / num_scales), requires_grad=learnable)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.gamma.fill_(1.0 / self.num_scales)

    def forward(self, masks: list[torch.Tensor]) -> torch.Tensor:
        """masks: L tensors ``T x h_l x w_l`` -> ``T x h x w`` at the finest resolution."""
        size = max((m.shape[-2:] for m in masks), key=lambda s: s[0] * s[1])
        out = None
        for gamma, m in zip(self.gamma, masks):
            if m.shape[-2:] != size:
                m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
            out = gamma * m if out is None else out + gamma * m
        return out
