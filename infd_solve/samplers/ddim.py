"""The diffusion arithmetic every sampler shares: timestep respacing, per-sample noise, the DDIM update, and
unguided DDIM sampling over any denoiser callable ``denoiser(x, t) -> eps``.

The DDIM update follows the official INFD/guided-diffusion code exactly (``tests/fixtures/FORMAT.md`` section 8),
including its "ddimN" timestep respacing, which differs from diffusers' "leading" spacing whenever N does not
divide 1000. The noise schedule itself comes from a diffusers scheduler (``alphas_cumprod``).
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


def step_noises(shape: Sequence[int], generator: Generator, count: int, device=None, dtype=torch.float32):
    """The noise of ``count`` successive steps, in order. Drawn from the same generators in the same order as
    one :func:`noise_like` call per step (so the values are the same), but for an accelerator all of it is
    drawn up front and copied once, instead of one host-to-device copy (and wait) per step."""
    device = torch.device(device or "cpu")
    if device.type == "cpu" or count == 0:
        return (noise_like(shape, generator, device, dtype) for _ in range(count))
    on_host = [noise_like(shape, generator, "cpu", dtype) for _ in range(count)]
    stacked = torch.stack(on_host).pin_memory() if torch.cuda.is_available() else torch.stack(on_host)
    return iter(stacked.to(device, non_blocking=True).unbind(0))


def initial_noise(shape: Sequence[int], generator: Generator, noise: torch.Tensor | None, device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """The sampler's start: ``noise`` if given (shape checked), else drawn from ``generator``."""
    if noise is None:
        return noise_like(shape, generator, device, dtype)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
    return noise.to(device, dtype)


def predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    return (1 / alpha_bar) ** 0.5 * x - (1 / alpha_bar - 1) ** 0.5 * eps


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: float,
    alpha_bar_prev: float,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One DDIM update to ``alpha_bar_prev`` from the predictions ``x0`` and ``eps`` at ``alpha_bar``; ``noise``
    is unused when eta=0 or at the last step (alpha_bar_prev = 1).

    The official code re-derives eps from x0 first, which equals the model's eps up to float rounding (< 1e-5
    on the reference fixture); guidance that edits x0 must keep the model's eps, or the edit cancels out."""
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
    noises = step_noises(x.shape, generator, len(timesteps) - 1 if eta > 0 else 0, x.device, x.dtype)
    for i, t in enumerate(tqdm(timesteps, desc="DDIM", disable=not progress)):
        a = acp[t]
        a_prev = acp[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = denoiser(x, t_batch)
        x0 = predict_x0(x, eps, a)
        noise = next(noises) if eta > 0 and i + 1 < len(timesteps) else None
        x = ddim_step(x0, eps, a, a_prev, eta, noise)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "eps": eps})
    return x
