"""Explainable zero-shot diagnosis from descriptor prompts."""

from convirt.zeroshot.classifier import Method, ZeroShotClassifier, ZeroShotOutput
from convirt.zeroshot.descriptors import DescriptorSet, Finding, list_descriptor_sets, load_descriptors

__all__ = [
    "DescriptorSet",
    "Finding",
    "Method",
    "ZeroShotClassifier",
    "ZeroShotOutput",
    "list_descriptor_sets",
    "load_descriptors",
]
