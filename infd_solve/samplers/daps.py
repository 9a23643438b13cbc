"""DAPS, decoupled annealing posterior sampling (Zhang et al., CVPR 2025), in its latent form: at each noise
level, estimate the clean latent by a short deterministic (DDIM, probability-flow) solve, sample the clean
latent given that estimate and the measurement by Langevin dynamics, then re-noise it to the next, lower
level. No backpropagation through the denoiser: the measurement term only needs the decoder, renderer and
losses."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .. import checks
from ..options import DEFAULT_STEPS, Option, fraction, positive
from .base import GUIDANCE_SCALE, Problem, confined, gradient, register_sampler, report
from .ddim import ddim_step, noise_like, predict_x0

DATA_WEIGHT = 3e5  # the measurement term's weight at guidance_scale 1 (a likelihood's 1 / (2 noise^2), per value)
ODE_STEPS = Option("ode_steps", 2, lambda v, n: checks.integer(v, n, 1, 100),
                   "DAPS: denoiser steps of the deterministic solve to the clean estimate at each level")
LANGEVIN_STEPS = Option("langevin_steps", 6, lambda v, n: checks.integer(v, n, 0, 10_000),
                        "DAPS: Langevin steps on the clean latent at each level")
LANGEVIN_LR = Option("langevin_lr", 1e-3, fraction, "DAPS: the Langevin step size at the first level")
LR_MIN_RATIO = Option("lr_min_ratio", 0.1, positive, "DAPS: the step size's decay over the levels (last / first)")


def _clean_estimate(problem: Problem, x: torch.Tensor, t: int, ode_steps: int) -> torch.Tensor:
    """DDIM with eta 0 from ``x`` at ``t`` to a clean latent, in at most ``ode_steps`` denoiser calls."""
    acp = problem.alphas_cumprod.double().tolist()
    stops = sorted(set(torch.linspace(t, 0, ode_steps + 1)[:-1].round().long().tolist()), reverse=True)
    with torch.no_grad():
        for k, here in enumerate(stops):
            eps = problem.denoise(x, here)
            a_next = acp[stops[k + 1]] if k + 1 < len(stops) else 1.0  # the last step lands on the clean latent
            x = ddim_step(predict_x0(x, eps, acp[here]), eps, acp[here], a_next, 0.0, None)
    return x


def _langevin(problem, x0_hat, i, t, sigma, steps, lr, scale, generator):
    """Langevin dynamics on the clean latent for ``N(x0_hat, sigma^2) * exp(-scale * loss)``, with step ``lr``
    (at most half the prior's variance, which keeps the prior's pull stable at the lowest levels)."""
    x, step = x0_hat.clone(), min(lr, sigma**2 / 2)
    loss, terms, skipped = x.new_zeros(x.shape[0]), {}, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            loss, terms = problem.objective(x_in, i, t, False)
            grad = gradient(loss, x_in)
        grad, skipped = confined(problem, grad, loss, i, t, None)
        score = (x0_hat - x) / sigma**2 - scale * grad
        x = x + step * score + (2 * step) ** 0.5 * noise_like(x.shape, generator, x.device, x.dtype)
    return x.detach(), loss.detach(), terms, skipped


@register_sampler("daps", options=[GUIDANCE_SCALE, ODE_STEPS, LANGEVIN_STEPS, LANGEVIN_LR, LR_MIN_RATIO],
                  default_steps=DEFAULT_STEPS // ODE_STEPS.default)
def daps(problem: Problem, x: torch.Tensor, *, guidance_scale: float = 1.0, ode_steps: int = 2,
         langevin_steps: int = 6, langevin_lr: float = 1e-3, lr_min_ratio: float = 0.1, callback=None,
         progress: bool = True) -> torch.Tensor:
    """DAPS: at each level ``t`` (the ``problem.timesteps``), the clean estimate from ``ode_steps`` DDIM
    steps, ``langevin_steps`` Langevin steps on the clean latent under ``N(estimate, sigma_t^2)`` (sigma_t:
    the level's noise in clean-latent units) times the measurement's ``exp(-guidance_scale * DATA_WEIGHT *
    loss)`` (the constraints' weighted losses, not normalized), then fresh noise to the next level."""
    if problem.keep is not None:
        raise ValueError("sampler 'daps' does not support keep_outside; use dps or mpgd")
    levels = len(problem.timesteps)
    for i, t, a, a_prev, _ in tqdm(problem.schedule(), total=levels, desc="DAPS", disable=not progress):
        x0_hat = _clean_estimate(problem, x, t, ode_steps)
        sigma = ((1 - a) / a) ** 0.5
        decay = 1 + (lr_min_ratio - 1) * i / max(1, levels - 1)
        x0, loss, terms, skipped = _langevin(problem, x0_hat, i, t, sigma, langevin_steps, langevin_lr * decay,
                                             DATA_WEIGHT * guidance_scale, problem.generator)
        if a_prev < 1:
            x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * noise_like(x.shape, problem.generator, x.device, x.dtype)
        else:
            x = x0
        report(callback, i=i, t=t, x=x, x0=x0, loss=loss, terms=terms, skipped=skipped)
    return x
