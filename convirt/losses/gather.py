"""Cross-rank gathering, shared by the losses written here (open_clip's own losses gather themselves)."""

from __future__ import annotations

import torch
import torch.distributed.nn
from open_clip.loss import gather_features


def gather_pairs(
    image_features: torch.Tensor, text_features: torch.Tensor, rank: int = 0, world_size: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's ``(B, D)`` features, gathered with gradients, and this rank's rows among them.

    Each rank then scores its own ``B`` rows against all ``world_size * B`` columns; once DDP
    averages the gradients they equal one process's over the global batch.

    Returns:
        ``(world*B, D)`` images, ``(world*B, D)`` texts and the ``(B,)`` ids of this rank's rows
        (as given, and ``0..B-1``, on one process).
    """
    batch = image_features.shape[0]
    if world_size > 1:
        all_images, all_texts = gather_features(
            image_features, text_features, local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size
        )
    else:
        all_images, all_texts = image_features, text_features
    return all_images, all_texts, torch.arange(batch, device=image_features.device) + rank * batch


def gather_rows(tensor: torch.Tensor, world_size: int = 1, with_grad: bool = True) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along the first axis, in rank order (as given on one process).

    ``with_grad`` lets gradients flow back to each rank's part (features); without it, for ids.
    """
    if world_size <= 1:
        return tensor
    if with_grad:
        return torch.cat(torch.distributed.nn.all_gather(tensor))
    parts = [torch.zeros_like(tensor) for _ in range(world_size)]
    torch.distributed.all_gather(parts, tensor)
    return torch.cat(parts)
