"""Samplers over any denoiser callable (k-diffusion style): ``denoiser(x, t) -> eps``.

The DDIM update follows the official INFD/guided-diffusion code exactly (see FORMAT.md section 8), including
its "ddimN" timestep respacing, which differs from diffusers' "leading" spacing whenever N does not divide
1000. The noise schedule itself comes from a diffusers scheduler (``alphas_cumprod``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """Official "ddimN" respacing, in visiting (descending) order: the smallest stride ``s`` with
    ``len(range(0, T, s)) == steps``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    for stride in range(1, num_train_timesteps + 1):
        count = len(range(0, num_train_timesteps, stride))
        if count == steps:
            return list(range(0, num_train_timesteps, stride))[::-1]
        if count < steps:
            break
    valid = sorted({len(range(0, num_train_timesteps, s)) for s in range(1, num_train_timesteps + 1)})
    near = sorted(valid, key=lambda n: abs(n - steps))[:4]
    raise ValueError(
        f"steps={steps} cannot be spaced evenly over {num_train_timesteps} timesteps with an integer stride; "
        f"nearby valid counts: {sorted(near)}"
    )


def noise_like(shape: Sequence[int], generator: Generator, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; a list of generators seeds each batch row on its own (row i never depends on
    the other rows)."""
    if isinstance(generator, Sequence) and len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return randn_tensor(tuple(shape), generator=generator, device=torch.device(device or "cpu"), dtype=dtype)


def predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    return (1 / alpha_bar) ** 0.5 * x - (1 / alpha_bar - 1) ** 0.5 * eps


def ddim_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    alpha_bar: float,
    alpha_bar_prev: float,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One DDIM update from ``x`` (at alpha_bar) given the prediction ``x0``; ``noise`` unused when eta=0 or at
    the last step (alpha_bar_prev = 1)."""
    eps = ((1 / alpha_bar) ** 0.5 * x - x0) / (1 / alpha_bar - 1) ** 0.5  # re-derived from x0, as official
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)) ** 0.5 * (1 - alpha_bar / alpha_bar_prev) ** 0.5
    out = alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev - sigma**2) ** 0.5 * eps
    if sigma > 0 and noise is not None:
        out = out + sigma * noise
    return out


def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    eta: float = 1.0,
    generator: Generator = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM from ``x`` (noise at ``timesteps[0]``) to a clean sample.

    ``callback`` receives ``{"i", "t", "x", "x0", "eps"}`` after every step, for visualization or research,
    without touching the loop.
    """
    acp = alphas_cumprod.double().tolist()
    for i, t in enumerate(tqdm(timesteps, desc="DDIM", disable=not progress)):
        a = acp[t]
        a_prev = acp[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = denoiser(x, t_batch)
        x0 = predict_x0(x, eps, a)
        noise = noise_like(x.shape, generator, x.device, x.dtype) if eta > 0 and i + 1 < len(timesteps) else None
        x = ddim_step(x, x0, a, a_prev, eta, noise)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "eps": eps})
    return x
