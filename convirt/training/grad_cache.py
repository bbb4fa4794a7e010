"""GradCache: a large batch's contrastive loss and exact gradients with the memory of a sub-batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from convirt.training.rng import rng_state, set_rng_state


def grad_cache_step(module: Any, batch: dict[str, Any], size: int) -> torch.Tensor:
    """GradCache (Gao et al., 2021): the full-batch loss of a ``ContrastiveModule`` from sub-batch features.

    1. Encode the sub-batches without a graph and cache the features.
    2. Compute the loss on the whole batch from the cached features and take its gradient
       with respect to them (and to the logit scale / bias).
    3. Re-encode each sub-batch with a graph (same random state) and pull the cached feature
       gradients back into the parameters.
    Gradients are collected with ``torch.autograd.grad`` and handed to Lightning as a linear
    surrogate ``sum(p * grad)``: its one backward sets exactly those gradients, so mixed
    precision scaling, clipping, DDP's all-reduce and the optimizer step stay Lightning's.
    Under ``16-mixed`` steps 2 and 3 take the gradients of the loss times the scale of
    Lightning's ``GradScaler`` (fp16 feature gradients and activations would underflow
    otherwise, as in a plain step without the scaler), and the parameter gradients are divided by
    it again before the surrogate, whose backward Lightning scales itself.
    """
    parts = [slice(start, start + size) for start in range(0, batch["image"].shape[0], size)]
    params = [p for p in module.model.parameters() if p.requires_grad]
    states = []
    with torch.no_grad():
        cached = []
        for part in parts:
            states.append(rng_state())
            cached.append(module(batch["image"][part], batch["text"][part]))
    after = rng_state()
    image_all = torch.cat([c[0] for c in cached]).detach().requires_grad_(True)
    text_all = torch.cat([c[1] for c in cached]).detach().requires_grad_(True)
    loss = module._step(batch, "train", (image_all, text_all))
    scale = _loss_scale(module)
    scaled = loss if scale is None else loss * scale
    image_grad, text_grad, *direct = torch.autograd.grad(scaled, [image_all, text_all, *params], allow_unused=True)
    grads: list[torch.Tensor | None] = list(direct)  # None: the parameter plays no part (as in a plain step)
    with _frozen_norm_statistics(module.model):  # step 1 already updated the running statistics
        for part, state in zip(parts, states):
            set_rng_state(state)
            image_features, text_features = module(batch["image"][part], batch["text"][part])
            surrogate = (image_features * image_grad[part]).sum() + (text_features * text_grad[part]).sum()
            for i, g in enumerate(torch.autograd.grad(surrogate, params, allow_unused=True)):
                if g is not None:
                    previous = grads[i]
                    grads[i] = g if previous is None else previous + g
    set_rng_state(after)
    if scale is not None:  # an overflow stays inf, for the scaler to skip the step
        grads = [None if g is None else g / scale for g in grads]
    return sum((p * g.detach()).sum() for p, g in zip(params, grads) if g is not None)  # type: ignore[return-value]


def _loss_scale(module: Any) -> float | None:
    """The scale of the ``GradScaler`` of the module's Lightning precision plugin (``16-mixed``);
    None without one (``32-true``, ``bf16-mixed``, or no trainer attached)."""
    trainer = getattr(module, "_trainer", None)
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled():
        return scaler.get_scale()
    return None


class _frozen_norm_statistics:  # noqa: N801 (used as a context manager)
    """Batch-norm layers normalise with batch statistics but leave their running statistics alone."""

    def __init__(self, model: nn.Module) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        self.momenta: list[float | None] = []

    def __enter__(self) -> None:
        self.momenta = [m.momentum for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, momentum in zip(self.norms, self.momenta):
            m.momentum = momentum
