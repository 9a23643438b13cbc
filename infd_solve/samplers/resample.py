"""ReSample (Song et al., ICLR 2024): latent DDIM with hard data consistency. At some steps the predicted clean
latent is optimized to fit the measurement, then mapped back to the current noise level by stochastic
resampling: a draw between the fitted latent, noised, and the unconditional sample."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .. import checks
from ..options import Option, positive
from .base import ETA, GUIDANCE_SCALE, Problem, confined, gradient, register_sampler, report
from .ddim import ddim_step, noise_like, predict_x0, step_noises

CONSISTENCY_EVERY = Option("consistency_every", 5, lambda v, n: checks.integer(v, n, 1, 10_000),
                           "ReSample: hard data consistency every this many steps")
CONSISTENCY_STEPS = Option("consistency_steps", 10, lambda v, n: checks.integer(v, n, 1, 10_000),
                           "ReSample: optimization steps of each hard data consistency")
RESAMPLE_GAMMA = Option("resample_gamma", 40.0, positive,
                        "ReSample: gamma, how far resampling trusts the fitted latent over the unconditional one")


def _fit(problem: Problem, x0: torch.Tensor, i: int, t: int, steps: int, lr: float):
    """Hard data consistency: Adam on the clean latent against the (unnormalized) objective, from ``x0``."""
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    loss, terms, skipped = x0.new_zeros(x0.shape[0]), {}, torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
    for _ in range(steps):
        with torch.enable_grad():
            loss, terms = problem.objective(x, i, t, False)
            grad = gradient(loss, x)
        x.grad, skipped = confined(problem, grad, loss, i, t, None)
        opt.step()
    return x.detach(), loss.detach(), terms, skipped


def _resampled(problem: Problem, fitted, unconditional, a: float, a_prev: float, gamma: float) -> torch.Tensor:
    """Stochastic resampling (their eq. 13): between the fitted latent noised to ``a_prev`` and the
    unconditional sample there."""
    s2 = gamma * (1 - a_prev) / a * (1 - a / a_prev)
    mean = (s2 * a_prev**0.5 * fitted + (1 - a_prev) * unconditional) / (s2 + 1 - a_prev)
    std = (s2 * (1 - a_prev) / (s2 + 1 - a_prev)) ** 0.5
    return mean + std * noise_like(unconditional.shape, problem.generator, unconditional.device, unconditional.dtype)


@register_sampler("resample", options=[GUIDANCE_SCALE, ETA, CONSISTENCY_EVERY, CONSISTENCY_STEPS, RESAMPLE_GAMMA])
def resample(problem: Problem, x: torch.Tensor, *, guidance_scale: float = 1.0, eta: float = 1.0,
             consistency_every: int = 5, consistency_steps: int = 10, resample_gamma: float = 40.0, callback=None,
             progress: bool = True) -> torch.Tensor:
    """ReSample: DDIM; every ``consistency_every`` steps (counted back from the last, which is one) the clean
    prediction is fitted to the measurement (``consistency_steps`` Adam steps of learning rate
    ``0.05 * guidance_scale``), then resampled to the next noise level:
    ``N((s^2 sqrt(a') z* + (1 - a') x') / (s^2 + 1 - a'), s^2 (1 - a') / (s^2 + 1 - a'))`` with ``x'`` the
    unconditional DDIM sample, ``z*`` the fitted latent and ``s^2 = gamma (1 - a') / a (1 - a / a')``."""
    if problem.keep is not None:
        raise ValueError("sampler 'resample' does not support keep_outside; use dps or mpgd")
    noises = step_noises(x.shape, problem.generator, len(problem.timesteps) - 1 if eta > 0 else 0, x.device, x.dtype)
    for i, t, a, a_prev, _ in tqdm(problem.schedule(), total=len(problem.timesteps), desc="ReSample",
                                   disable=not progress):
        with torch.no_grad():
            eps = problem.denoise(x, t)
        x0 = predict_x0(x, eps, a)
        noise = next(noises) if eta > 0 and a_prev < 1 else None
        x = ddim_step(x0, eps, a, a_prev, eta, noise)
        loss, terms, skipped = x0.new_zeros(x.shape[0]), {}, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if (len(problem.timesteps) - 1 - i) % consistency_every == 0:  # the last step is one of them
            fitted, loss, terms, skipped = _fit(problem, x0, i, t, consistency_steps, 0.05 * guidance_scale)
            x = fitted if a_prev == 1 else _resampled(problem, fitted, x, a, a_prev, resample_gamma)
        report(callback, i=i, t=t, x=x, x0=x0, loss=loss, terms=terms, skipped=skipped)
    return x
