"""Prompt pairs for zero-shot scoring: positive and negative sentences per observation or finding."""

from __future__ import annotations

from convirt.zeroshot.descriptors import DescriptorSet

POSITIVE_TEMPLATE = "There is {observation} indicating {finding}."
NEGATIVE_TEMPLATE = "There is no {observation} indicating {finding}."
NAME_POSITIVE_TEMPLATE = "There is {finding}."
NAME_NEGATIVE_TEMPLATE = "There is no {finding}."


def descriptor_prompts(descriptors: DescriptorSet) -> tuple[list[str], list[str], list[int]]:
    """Xplainer prompts: one positive and one negative sentence per observation.

    Returns:
        ``(positives, negatives, owner)``: ``owner[j]`` is the index of the finding that
        observation ``j`` belongs to.
    """
    positives, negatives, owner = [], [], []
    for index, finding in enumerate(descriptors.findings):
        for observation in finding.observations:
            positives.append(POSITIVE_TEMPLATE.format(observation=observation, finding=finding.prompt))
            negatives.append(NEGATIVE_TEMPLATE.format(observation=observation, finding=finding.prompt))
            owner.append(index)
    return positives, negatives, owner


def name_prompts(descriptors: DescriptorSet) -> tuple[list[str], list[str]]:
    """CheXzero-style prompts: the finding named, positive and negative."""
    positives = [NAME_POSITIVE_TEMPLATE.format(finding=f.prompt) for f in descriptors.findings]
    negatives = [NAME_NEGATIVE_TEMPLATE.format(finding=f.prompt) for f in descriptors.findings]
    return positives, negatives
