"""MPGD, manifold-preserving guided diffusion (He et al., ICLR 2024): the measurement gradient is taken on the
predicted clean sample only, which moves before the DDIM step; no backpropagation through the denoiser."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .base import (ETA, GUIDANCE_SCALE, MAX_GRAD_NORM, MAX_STRIDE, NORMALIZE, Problem, UnguidedTrajectory, confined,
                   gradient, register_sampler, report)
from .ddim import ddim_step, predict_x0, step_noises


@register_sampler("mpgd", options=[GUIDANCE_SCALE, ETA, NORMALIZE, MAX_GRAD_NORM])
def mpgd(problem: Problem, x: torch.Tensor, *, guidance_scale: float = 1.0, eta: float = 1.0, normalize: bool = True,
         max_grad_norm: float | None = None, callback=None, progress: bool = True) -> torch.Tensor:
    """MPGD: the predicted clean sample moves against the loss's gradient (scaled by 1/sqrt(alpha_bar)), then
    the DDIM step with the model's own noise prediction (re-deriving it from the moved sample would cancel the
    edit). Cheaper than DPS by the denoiser's backward pass; the same kick size and skipping rules."""
    noises = step_noises(x.shape, problem.generator, len(problem.timesteps) - 1 if eta > 0 else 0, x.device, x.dtype)
    unguided = UnguidedTrajectory(problem, x) if problem.keep is not None else None
    for i, t, a, a_prev, stride in tqdm(problem.schedule(), total=len(problem.timesteps), desc="MPGD",
                                        disable=not progress):
        with torch.no_grad():
            eps = problem.denoise(x, t)
        with torch.enable_grad():
            x0 = predict_x0(x, eps, a).detach().requires_grad_(True)
            loss, terms = problem.objective(x0, i, t, normalize)
            grad = gradient(loss, x0)
        grad, skipped = confined(problem, grad, loss, i, t, max_grad_norm)
        x0 = x0.detach() - guidance_scale * min(stride, MAX_STRIDE) / a**0.5 * grad
        noise = next(noises) if eta > 0 and a_prev < 1 else None
        x = ddim_step(x0, eps, a, a_prev, eta, noise)
        if unguided is not None:
            x = unguided.step(x, t, a, a_prev, eta, noise)
        report(callback, i=i, t=t, x=x, x0=x0, loss=loss.detach(), terms=terms, skipped=skipped,
               grad_norm=grad.flatten(1).norm(dim=1))
    return x
