"""Contrastive losses over normalised image and text features, one call signature for all."""

from convirt.losses.contrastive import LOSSES, SigLipLoss, create_loss
from convirt.losses.convirt import ConVIRTLoss
from convirt.losses.text_negatives import TextNegativesClipLoss

__all__ = ["LOSSES", "ConVIRTLoss", "SigLipLoss", "TextNegativesClipLoss", "create_loss"]
