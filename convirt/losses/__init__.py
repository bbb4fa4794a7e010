"""Contrastive losses over normalised image and text features."""

from convirt.losses.contrastive import LOSSES, create_loss
from convirt.losses.convirt import ConVIRTLoss
from convirt.losses.text_negatives import TextNegativesClipLoss

__all__ = ["LOSSES", "ConVIRTLoss", "TextNegativesClipLoss", "create_loss"]
