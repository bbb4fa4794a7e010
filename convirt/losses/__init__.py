"""Contrastive losses over normalised image and text features."""

from convirt.losses.contrastive import LOSSES, create_loss
from convirt.losses.convirt import ConVIRTLoss

__all__ = ["LOSSES", "ConVIRTLoss", "create_loss"]
