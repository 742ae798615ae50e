"""DePT's Channel Adjusted Transfer (CAT) head and its test-time fusion with the ITM logits.

The CAT head sits beside CLIP's image-text matching (ITM) head and reads the same raw,
un-normalised encoder outputs: a channel-wise transform (cwT) per modality, then a linear
classifier over the base classes. Module names are DePT's (``film_lp_img``, ``film_lp_text``,
``linear_probe_proj``) so checkpoint keys match the original's.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

CAT_TYPES = ("linear", "similarity")
CWT_INITS = ("identity", "random")
FUSION_SPACES = ("logits", "probs")

#: spread of the "random" cwT init around the identity (the paper says "random" without a distribution)
RANDOM_INIT_STD = 0.02

ItmFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ChannelTransform(nn.Module):
    """DePT's cwT ("FiLM"): ``scale * x + bias`` per channel.

    Parameters are kept in fp32 and cast to the input's dtype in ``forward``, as DePT does, so
    that under PREC fp16 the optimizer still updates fp32 values.
    """

    def __init__(self, dim: int, init: str = "identity") -> None:
        super().__init__()
        if init not in CWT_INITS:
            raise ValueError(f"cwT init must be one of {CWT_INITS}, got {init!r}")
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        if init == "random":
            nn.init.normal_(self.scale, 1.0, RANDOM_INIT_STD)
            nn.init.normal_(self.bias, 0.0, RANDOM_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.to(x.dtype) * x + self.bias.to(x.dtype)


class CATHead(nn.Module):
    """cwT for image and text features plus a classifier (DePT's CustomCLIP additions).

    ``num_classes`` None builds no classifier (DePT's "new" models, which only use ITM); so
    does ``kind`` "similarity" (paper variant v2: cosine logits between transformed features).
    ``use_cwt`` False leaves the features untouched (DePT's ``TRAINER.FILM.LINEAR_PROBE``).
    The classifier is stored in CLIP's dtype as in DePT (fp16 under PREC fp16, updated without
    fp32 master weights); the cwT parameters stay fp32.
    """

    def __init__(self, dim: int, num_classes: Optional[int], dtype: torch.dtype, kind: str = "linear",
                 use_cwt: bool = True, cwt_init: str = "identity") -> None:
        super().__init__()
        if kind not in CAT_TYPES:
            raise ValueError(f"CAT head type must be one of {CAT_TYPES}, got {kind!r}")
        self.kind = kind
        self.use_cwt = use_cwt
        if use_cwt:
            self.film_lp_img = ChannelTransform(dim, cwt_init)
            self.film_lp_text = ChannelTransform(dim, cwt_init)
        if kind == "linear" and num_classes is not None:
            self.linear_probe_proj: nn.Module = nn.Linear(dim, num_classes).to(dtype)
        else:
            self.linear_probe_proj = nn.Identity()

    @property
    def has_classifier(self) -> bool:
        return isinstance(self.linear_probe_proj, nn.Linear)

    def transform_image(self, features: torch.Tensor) -> torch.Tensor:
        return self.film_lp_img(features) if self.use_cwt else features

    def transform_text(self, features: torch.Tensor) -> torch.Tensor:
        return self.film_lp_text(features) if self.use_cwt else features

    def training_logits(self, image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                        itm: ItmFn) -> Tuple[torch.Tensor, torch.Tensor]:
        """CAT logits and their labels for the loss.

        "linear": rows = [text feature of each sample's label; image features] -> [2B, C] with
        the labels twice. Text features [B, C, D] (image-conditioned, CoCoOp) give each sample
        its own row. "similarity": ``itm`` on the transformed features -> [B, C], labels as given.
        """
        if self.kind == "similarity":
            return self.inference_logits(image_features, text_features, itm), labels
        if not self.has_classifier:
            raise RuntimeError("This CAT head has no classifier (built for new classes), so it cannot be trained")
        if text_features.dim() == 3:
            rows = text_features[torch.arange(labels.numel(), device=labels.device), labels]
        else:
            rows = text_features[labels]
        features = torch.cat([self.transform_text(rows), self.transform_image(image_features)])
        return self.linear_probe_proj(features), torch.cat([labels, labels])

    def inference_logits(self, image_features: torch.Tensor, text_features: torch.Tensor,
                         itm: ItmFn) -> torch.Tensor:
        """CAT logits [B, C] of a batch: the classifier on transformed image features (or v2's cosine)."""
        if self.kind == "similarity":
            return itm(self.transform_image(image_features), self.transform_text(text_features))
        return self.linear_probe_proj(self.transform_image(image_features))


def fuse(itm_logits: torch.Tensor, cat_logits: torch.Tensor, weight: float, space: str = "logits") -> torch.Tensor:
    """Test-time fusion (1 - w) ITM + w CAT, on raw logits (DePT's code) or on softmax
    probabilities (paper Eq. 8). ITM logits carry CLIP's x100 temperature and CAT logits none, so
    the two spaces can rank classes differently."""
    if space == "probs":
        return (1 - weight) * itm_logits.softmax(dim=-1) + weight * cat_logits.softmax(dim=-1)
    if space != "logits":
        raise ValueError(f"fusion space must be one of {FUSION_SPACES}, got {space!r}")
    return (1 - weight) * itm_logits + weight * cat_logits
