"""Explainable zero-shot diagnosis from descriptor prompts."""

from convirt.zeroshot.classifier import Method, ZeroShotClassifier, ZeroShotOutput
from convirt.zeroshot.descriptors import DescriptorSet, Finding, list_descriptor_sets, load_descriptors
from convirt.zeroshot.evaluate import ZeroShotFolderOutput, load_zeroshot_folder

__all__ = [
    "DescriptorSet",
    "Finding",
    "Method",
    "ZeroShotClassifier",
    "ZeroShotFolderOutput",
    "ZeroShotOutput",
    "list_descriptor_sets",
    "load_descriptors",
    "load_zeroshot_folder",
]
