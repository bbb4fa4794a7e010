"""Contrastive losses over normalised image and text features."""

from convirt.losses.contrastive import LOSSES, create_loss

__all__ = ["LOSSES", "create_loss"]
