"""DPS (Chung et al., ICLR 2023): DDIM, each step moved against the gradient of the measurement loss on the
predicted clean sample, taken through the denoiser with respect to the noisy sample."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .base import (ETA, GUIDANCE_SCALE, MAX_GRAD_NORM, MAX_STRIDE, NORMALIZE, Problem, UnguidedTrajectory, confined,
                   gradient, register_sampler, report)
from .ddim import ddim_step, predict_x0, step_noises


@register_sampler("dps", options=[GUIDANCE_SCALE, ETA, NORMALIZE, MAX_GRAD_NORM])
def dps(problem: Problem, x: torch.Tensor, *, guidance_scale: float = 1.0, eta: float = 1.0, normalize: bool = True,
        max_grad_norm: float | None = None, callback=None, progress: bool = True) -> torch.Tensor:
    """DPS: the gradient through the denoiser, subtracted after each DDIM step (Chung et al. 2023).

    Each step's kick is ``guidance_scale * stride`` times the gradient, ``stride`` being the training timesteps
    the step covers (at most ``MAX_STRIDE``), so the total guidance does not shrink when fewer steps are
    taken. The objective is summed over the batch, which leaves every sample its own gradient. Samples whose
    loss or gradient is not finite get no guidance that step (``skipped``).
    """
    noises = step_noises(x.shape, problem.generator, len(problem.timesteps) - 1 if eta > 0 else 0, x.device, x.dtype)
    unguided = UnguidedTrajectory(problem, x) if problem.keep is not None else None
    for i, t, a, a_prev, stride in tqdm(problem.schedule(), total=len(problem.timesteps), desc="DPS",
                                        disable=not progress):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps = problem.denoise(x_in, t)
            x0 = predict_x0(x_in, eps, a)
            loss, terms = problem.objective(x0, i, t, normalize)
            grad = gradient(loss, x_in)
        grad, skipped = confined(problem, grad, loss, i, t, max_grad_norm)
        noise = next(noises) if eta > 0 and a_prev < 1 else None
        x = (ddim_step(x0.detach(), eps.detach(), a, a_prev, eta, noise)
             - guidance_scale * min(stride, MAX_STRIDE) * grad)
        if unguided is not None:
            x = unguided.step(x, t, a, a_prev, eta, noise)
        report(callback, i=i, t=t, x=x, x0=x0.detach(), loss=loss.detach(), terms=terms, skipped=skipped,
               grad_norm=grad.flatten(1).norm(dim=1))
    return x
