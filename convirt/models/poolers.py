"""Text poolers registered with open_clip (``hf_pooler_type`` in a model config).

Ours because open_clip 3.3's ``max_pooler`` masks the wrong tokens (it fills the real tokens, not
the padding, with -inf, and fails on integer masks). ConVIRT max-pools the last hidden states
over the real tokens.
"""

from __future__ import annotations

import torch
from open_clip.hf_model import register_pooler
from torch import nn


@register_pooler
class MaskedMaxPooler(nn.Module):
    """Max over the real (non-padding) tokens of the last hidden states; ``masked_max_pooler``."""

    def forward(self, x: object, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = x.last_hidden_state  # type: ignore[attr-defined]
        padding = attention_mask.unsqueeze(-1) == 0
        return hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).max(dim=1).values
