"""Refinement after sampling: a few optimization steps on the final clean latent against the observations."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .base import Objective, gradient, sanitize

def refine_latent(x0: torch.Tensor, objective: Objective, steps: int, lr: float = 0.05, callback=None,
                  progress: bool = True, anchor: float = 0.0, hold: Objective | None = None,
                  hold_weight: float = 10.0) -> torch.Tensor:
    """``steps`` of Adam on the clean latent against ``objective`` (unnormalized), with the "hard data
    consistency" of latent solvers such as ReSample, applied once at the end: guided sampling stops short of
    fitting the observations at 25-50 steps.

    ``anchor``: weight of the mean squared distance to ``x0``. Adam steps every latent cell by about ``lr``
    however small its gradient, so cells the observation barely sees (under an inpainting hole) would drift;
    the anchor keeps them at the sample. ``hold``: the other constraints (e.g. CLIP boxes), which must not get
    worse: each one's excess over its value at the start is penalized (``hold_weight`` times it, per sample).
    Adam's update is elementwise and every term is per sample, so samples stay independent; a sample whose
    loss or gradient is not finite keeps its latent that step. ``callback`` gets ``phase="refine"`` and the
    keys of the samplers' callbacks (``t`` is 0, ``i`` counts refinement steps; ``terms`` includes the held
    constraints').
    """
    start = x0.detach()
    held = _held_terms(hold, start)
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for i in tqdm(range(steps), desc="refine", disable=not progress):
        with torch.enable_grad():
            loss, terms = objective(x, i, 0, False)
            loss = loss + anchor * (x - start).square().flatten(1).mean(1)
            if hold is not None:
                _, kept = hold(x, i, 0, False)
                loss = loss + hold_weight * sum((kept[k] - held[k]).clamp_min(0) for k in kept)
                terms = terms | {k: v.detach() for k, v in kept.items()}
            grad = gradient(loss, x)
        grad, skipped = sanitize(grad, loss.detach(), None)
        before = x.detach().clone() if skipped.any() else None
        x.grad = grad
        opt.step()
        if before is not None:  # Adam's momentum would still move a skipped sample: put it back
            with torch.no_grad():
                x[skipped] = before[skipped]
        if callback is not None:
            callback({"phase": "refine", "i": i, "t": 0, "x": x.detach(), "x0": x.detach(), "loss": loss.detach(),
                      "terms": terms, "skipped": skipped})
    return x.detach()


def _held_terms(hold: Objective | None, x0: torch.Tensor) -> dict[str, torch.Tensor]:
    if hold is None:
        return {}
    with torch.no_grad():
        return {k: v.detach() for k, v in hold(x0, 0, 0, False)[1].items()}
