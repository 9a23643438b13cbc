"""What every guided sampler is given (:class:`Problem`), how families are found (:func:`register_sampler`),
and the small pieces their loops share.

A sampler family is one function::

    @register_sampler("mine", options=[GUIDANCE_SCALE])
    def mine(problem: Problem, x, *, guidance_scale=1.0, callback=None, progress=True):
        ...                       # x: noise at problem.timesteps[0]; returns the clean latent
        return x

Its keyword-only options are declared as :class:`~infd_solve.options.Option` objects, so the solver, layouts,
batch jobs and the commands check and document them from one place. ``callback`` receives a dict per step
with ``phase`` (``"sample"``), ``i``, ``t``, ``x``, ``x0``, ``loss``, ``terms`` and ``skipped`` (the samples
whose guidance was dropped that step because a loss or gradient was not finite); gradient-guided families add
``grad_norm``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .. import checks
from ..options import DEFAULT_STEPS, Option, OptionError, fraction, non_negative, optional, positive
from .ddim import Denoiser, Generator, ddim_step, predict_x0

# (z0_hat, step index, timestep, normalize) -> (per-sample loss to descend [B], {name: per-sample loss})
Objective = Callable[[torch.Tensor, int, int, bool], tuple[torch.Tensor, dict]]
ENTRY_POINTS = "infd_solve.samplers"  # where installed packages register families of their own


@dataclass
class Problem:
    """The prior and the measurement, as a sampler sees them.

    ``denoiser(x_t, t) -> eps`` on the sampler's latents; ``alphas_cumprod`` the noise schedule; ``timesteps``
    the ones to visit, descending; ``objective(z0, i, t, normalize)`` the constraints' per-sample loss on a
    predicted clean latent (``normalize``: DPS's square root of each term); ``generator`` one per sample
    (or one, or ``None``); ``region(i, t)`` an optional mask of the latent cells guidance may change at that
    step; ``keep`` an optional mask outside which the result must follow the unguided trajectory.
    """

    denoiser: Denoiser
    alphas_cumprod: torch.Tensor
    timesteps: Sequence[int]
    objective: Objective
    generator: Generator = None
    region: Callable[[int, int], torch.Tensor | None] | None = None
    keep: torch.Tensor | None = None

    def schedule(self) -> Iterator[tuple[int, int, float, float, int]]:
        """``(i, t, alpha_bar, alpha_bar of the next timestep, training timesteps the step covers)``."""
        acp = self.alphas_cumprod.double().tolist()
        for i, t in enumerate(self.timesteps):
            last = i + 1 == len(self.timesteps)
            yield (i, t, acp[t], 1.0 if last else acp[self.timesteps[i + 1]],
                   t + 1 if last else t - self.timesteps[i + 1])

    def denoise(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.denoiser(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))


# ------------------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Sampler:
    name: str
    function: Callable[..., torch.Tensor]
    options: dict[str, Option]
    summary: str
    default_steps: int = DEFAULT_STEPS  # the steps that spend the solver's budget of denoiser evaluations


SAMPLERS: dict[str, Sampler] = {}


def register_sampler(name: str, options: Sequence[Option] = (), default_steps: int = DEFAULT_STEPS):
    """Register the decorated function as the sampler family ``name`` with its keyword-only ``options``.
    ``default_steps``: its steps when a solve names none; a family that calls the denoiser k times per step
    takes ``DEFAULT_STEPS // k``, so every family's default spends the same denoiser evaluations."""

    def register(function):
        previous = SAMPLERS.get(name)
        if previous is not None and previous.function.__qualname__ != function.__qualname__:
            raise TypeError(f"sampler {name!r} is already registered by {previous.function.__module__}")
        summary = (function.__doc__ or name).strip().splitlines()[0]
        SAMPLERS[name] = Sampler(name, function, {o.name: o for o in options}, summary,
                                 checks.integer(default_steps, "default_steps", 1))
        return function

    return register


def get_sampler(name) -> Sampler:
    """The family called ``name``: a registered one, else one an installed package offers under the entry-point
    group ``infd_solve.samplers``; ``ValueError`` naming the known ones otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"sampler must be a family's name, got {checks.shown(name)}")
    if name not in SAMPLERS:
        for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
            if entry.name == name:
                entry.load()  # importing it registers it
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is unknown; registered: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


# ------------------------------------------------------------------------------------------ shared options
GUIDANCE_SCALE = Option("guidance_scale", 1.0, non_negative,
                        "global guidance step size, times each constraint's weight")
ETA = Option("eta", 1.0, fraction, "DDIM eta (0: deterministic, 1: DDPM-like)")
MAX_GRAD_NORM = Option("max_grad_norm", None, optional(positive), "per-sample clipping of the guidance gradient")
NORMALIZE = Option("normalize", True, checks.boolean, "DPS normalization: guide on the square root of each loss")
# A guided step's kick grows with the training timesteps it covers, up to those of 50 steps over 1000: at
# fewer steps larger kicks overshoot and diverge.
MAX_STRIDE = 20


# ------------------------------------------------------------------------------------------ shared pieces
def sanitize(grad: torch.Tensor, loss: torch.Tensor, max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the gradient of samples whose loss or gradient is not finite, clip each sample's norm.
    Returns the cleaned gradient and a boolean mask of the samples that were skipped."""
    bad = ~torch.isfinite(grad).flatten(1).all(1) | ~torch.isfinite(loss)
    grad = torch.where(bad.view(-1, *[1] * (grad.dim() - 1)), torch.zeros_like(grad), grad)
    if max_norm is not None:
        norm = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.dim() - 1))
        grad = grad * (max_norm / norm.clamp_min(max_norm))
    return grad, bad


def gradient(loss: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """``d sum(loss) / d wrt`` (zeros when the loss does not depend on it): each sample's own gradient."""
    grad = torch.autograd.grad(loss.sum(), wrt, allow_unused=True)[0] if loss.requires_grad else None
    return torch.zeros_like(wrt) if grad is None else grad


def confined(problem: Problem, grad: torch.Tensor, loss: torch.Tensor, i: int, t: int, max_norm: float | None):
    """The step's guidance gradient confined to ``problem.region`` (before clipping, so the norm bound holds
    for what is applied), then sanitized (:func:`sanitize`)."""
    mask = problem.region(i, t) if problem.region is not None else None
    if mask is not None:
        grad = grad * mask.to(grad)
    return sanitize(grad, loss.detach(), max_norm)


class UnguidedTrajectory:
    """``keep_outside``: the unguided DDIM trajectory from the same noise, run beside a guided one; after each
    step the guided sample takes it where ``problem.keep`` is 0 (blended diffusion)."""

    def __init__(self, problem: Problem, x: torch.Tensor):
        self.problem, self.x = problem, x.detach().clone()

    def step(self, guided: torch.Tensor, t: int, a: float, a_prev: float, eta: float, noise) -> torch.Tensor:
        with torch.no_grad():
            eps = self.problem.denoise(self.x, t)
            self.x = ddim_step(predict_x0(self.x, eps, a), eps, a, a_prev, eta, noise)
        keep = self.problem.keep
        return keep * guided + (1 - keep) * self.x


def report(callback, **state) -> None:
    if callback is not None:
        callback({"phase": "sample"} | state)


__all__ = ["Problem", "Sampler", "SAMPLERS", "register_sampler", "get_sampler", "GUIDANCE_SCALE", "ETA",
           "MAX_GRAD_NORM", "NORMALIZE", "MAX_STRIDE", "sanitize", "gradient", "confined", "UnguidedTrajectory",
           "report", "OptionError"]
