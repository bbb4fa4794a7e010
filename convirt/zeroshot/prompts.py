"""Prompt pairs for zero-shot scoring: positive and negative sentences per observation or finding."""

from __future__ import annotations

from convirt.zeroshot.descriptors import DescriptorSet, Finding

POSITIVE_TEMPLATE = "There is {observation} indicating {finding}."
NEGATIVE_TEMPLATE = "There is no {observation} indicating {finding}."
NAME_POSITIVE_TEMPLATE = "There is {finding}."
NAME_NEGATIVE_TEMPLATE = "There is no {finding}."
# Template ensembles (CLIP-style): each class is the mean embedding of these sentences over the
# finding's prompt and synonyms.
ENSEMBLE_POSITIVE_TEMPLATES = (
    "There is {finding}.",
    "{finding}.",
    "Findings consistent with {finding}.",
    "Chest radiograph showing {finding}.",
)
ENSEMBLE_NEGATIVE_TEMPLATES = (
    "There is no {finding}.",
    "No {finding}.",
    "No evidence of {finding}.",
    "No radiographic evidence of {finding}.",
)


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


def _negative_sentence(phrase: str) -> str:
    return phrase[0].upper() + phrase[1:] + "."


def name_prompts(descriptors: DescriptorSet) -> tuple[list[str], list[str]]:
    """CheXzero-style prompts: the finding named, positive and negative (the finding's
    ``negative_prompt`` where it has one, e.g. "Normal chest radiograph.")."""
    positives = [NAME_POSITIVE_TEMPLATE.format(finding=f.prompt) for f in descriptors.findings]
    negatives = [
        _negative_sentence(f.negative_prompt) if f.negative_prompt else NAME_NEGATIVE_TEMPLATE.format(finding=f.prompt)
        for f in descriptors.findings
    ]
    return positives, negatives


def ensemble_prompts(descriptors: DescriptorSet) -> tuple[list[str], list[int], list[str], list[int]]:
    """Template-ensemble prompts: every template over the finding's prompt and synonyms.

    Returns:
        ``(positives, positive_owner, negatives, negative_owner)``: the owner lists give each
        sentence's finding index. A finding's ``negative_prompt`` joins its negatives.
    """
    positives, positive_owner, negatives, negative_owner = [], [], [], []
    for index, finding in enumerate(descriptors.findings):
        for phrase in (finding.prompt, *finding.synonyms):
            for template in ENSEMBLE_POSITIVE_TEMPLATES:
                positives.append(template.format(finding=phrase))
                positive_owner.append(index)
            for template in ENSEMBLE_NEGATIVE_TEMPLATES:
                negatives.append(template.format(finding=phrase))
                negative_owner.append(index)
        if finding.negative_prompt:
            negatives.append(_negative_sentence(finding.negative_prompt))
            negative_owner.append(index)
    return positives, positive_owner, negatives, negative_owner


def phrasing_pairs(finding: Finding) -> list[tuple[str, str]]:
    """Every (positive, negative) phrasing of one finding that prompt robustness scores: each
    template-ensemble pair over the finding's prompt and synonyms, and its name-prompt pair."""
    pairs = [
        (positive.format(finding=phrase), negative.format(finding=phrase))
        for phrase in (finding.prompt, *finding.synonyms)
        for positive, negative in zip(ENSEMBLE_POSITIVE_TEMPLATES, ENSEMBLE_NEGATIVE_TEMPLATES)
    ]
    name_pair = (
        NAME_POSITIVE_TEMPLATE.format(finding=finding.prompt),
        _negative_sentence(finding.negative_prompt)
        if finding.negative_prompt
        else NAME_NEGATIVE_TEMPLATE.format(finding=finding.prompt),
    )
    return pairs if name_pair in pairs else [*pairs, name_pair]
