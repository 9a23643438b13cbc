"""Samplers over any denoiser callable (k-diffusion style): ``denoiser(x, t) -> eps``.

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


# A guidance objective: (x0_hat, step index, timestep) -> (per-sample loss [B] to descend, per-term detail).
Objective = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, dict]]
GUIDANCE_MODES = ("dps", "x0")


def _sanitize(grad: torch.Tensor, loss: torch.Tensor, max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the gradient of samples whose loss or gradient is not finite, clip each sample's norm.
    Returns the cleaned gradient and a boolean mask of the samples that were skipped."""
    bad = ~torch.isfinite(grad).flatten(1).all(1) | ~torch.isfinite(loss)
    grad = torch.where(bad.view(-1, *[1] * (grad.dim() - 1)), torch.zeros_like(grad), grad)
    if max_norm is not None:
        norm = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.dim() - 1))
        grad = grad * (max_norm / norm.clamp_min(max_norm))
    return grad, bad


def sample_guided(
    denoiser: Denoiser,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    objective: Objective,
    scale: float = 1.0,
    mode: str = "dps",
    eta: float = 1.0,
    generator: Generator = None,
    max_grad_norm: float | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    max_stride: int | None = None,
    region: Callable[[int, int], torch.Tensor | None] | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM guided by the gradient of ``objective`` on the predicted clean sample.

    ``mode="dps"`` (Chung et al. 2023): the gradient is taken with respect to ``x_t`` through the denoiser and
    subtracted after the DDIM update. ``mode="x0"`` (manifold-preserving guidance): the gradient is taken with
    respect to ``x0_hat`` only, ``x0_hat`` moves against it (scaled by 1/sqrt(alpha_bar)), then the DDIM update;
    no backpropagation through the denoiser.

    Each step's guidance is ``scale * stride`` times the gradient, ``stride`` being the number of training
    timesteps the step covers, so the total guidance does not shrink when fewer steps are taken;
    ``max_stride`` caps that factor (a kick much larger than the noise removed in one step overshoots). The
    objective is summed over the batch, which leaves every sample's gradient its own:
    a sample never depends on the rest of its batch. Samples whose loss or gradient is not finite get no
    guidance that step (reported as ``skipped`` to the callback). ``region(i, t)``: an optional mask
    (broadcastable to ``x``, or ``None``) that multiplies step i's gradient, confining guidance to part of the
    latent. ``keep``: a mask (broadcastable to ``x``, values in [0, 1]); after every step the sample is blended
    with the unguided DDIM trajectory from the same noise, ``keep * guided + (1 - keep) * unguided``
    (blended diffusion): where ``keep`` is 0 the result is the unguided sample, so guidance cannot reach
    there even through the denoiser's global context (one more denoiser call per step, without gradient).

    ``callback`` receives ``{"i", "t", "x", "x0", "loss", "terms", "grad_norm", "skipped"}`` after every step.
    """
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"mode must be one of {GUIDANCE_MODES}, got {mode!r}")
    acp = alphas_cumprod.double().tolist()
    noises = step_noises(x.shape, generator, len(timesteps) - 1 if eta > 0 else 0, x.device, x.dtype)
    reference = x.detach().clone() if keep is not None else None
    for i, t in enumerate(tqdm(timesteps, desc=f"guided DDIM ({mode})", disable=not progress)):
        a = acp[t]
        last = i + 1 == len(timesteps)
        a_prev = 1.0 if last else acp[timesteps[i + 1]]
        stride = t + 1 if last else t - timesteps[i + 1]
        step = scale * (stride if max_stride is None else min(stride, max_stride))
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        with torch.enable_grad():
            if mode == "dps":
                x_in = x.detach().requires_grad_(True)
                eps = denoiser(x_in, t_batch)
                x0 = predict_x0(x_in, eps, a)
                wrt = x_in
            else:
                with torch.no_grad():
                    eps = denoiser(x, t_batch)
                x0 = wrt = predict_x0(x, eps, a).detach().requires_grad_(True)
            loss, terms = objective(x0, i, t)
            grad = (torch.autograd.grad(loss.sum(), wrt, allow_unused=True)[0] if loss.requires_grad else None)
        grad = torch.zeros_like(x) if grad is None else grad
        mask = region(i, t) if region is not None else None
        if mask is not None:  # before clipping, so the norm bound holds for what is applied
            grad = grad * mask.to(grad)
        grad, skipped = _sanitize(grad, loss.detach(), max_grad_norm)
        x0, eps = x0.detach(), eps.detach()
        if mode == "x0":
            x0 = x0 - step / a**0.5 * grad
        noise = next(noises) if eta > 0 and not last else None
        x = ddim_step(x0, eps, a, a_prev, eta, noise)
        if mode == "dps":
            x = x - step * grad
        if reference is not None:
            with torch.no_grad():
                eps_ref = denoiser(reference, t_batch)
                reference = ddim_step(predict_x0(reference, eps_ref, a), eps_ref, a, a_prev, eta, noise)
            x = keep * x + (1 - keep) * reference
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "loss": loss.detach(), "terms": terms,
                      "grad_norm": grad.flatten(1).norm(dim=1), "skipped": skipped})
    return x


def refine_latent(
    x0: torch.Tensor,
    objective: Objective,
    steps: int,
    lr: float = 0.05,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    anchor: float = 0.0,
) -> torch.Tensor:
    """Data consistency after sampling: ``steps`` of Adam on the clean latent against ``objective``.

    Guided sampling balances the constraints against the prior at every step and, at 25-50 steps, stops short
    of fitting the observations; a few optimization steps on the final latent close that gap (the "hard data
    consistency" of latent solvers such as ReSample, applied once at the end). Adam's update is elementwise
    and the objective is summed over the batch, so samples stay independent. A sample whose loss or gradient
    is not finite keeps its latent that step. ``callback`` gets the same keys as in :func:`sample_guided`
    (``t`` is 0, ``i`` counts refinement steps). ``anchor``: weight of the mean squared distance to ``x0``
    added to each sample's loss. Adam scales every latent cell's step to about ``lr`` however small its
    gradient, so cells the observation barely sees (under an inpainting hole) would drift; the anchor keeps
    them at the sample.
    """
    start = x0.detach()
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for i in tqdm(range(steps), desc="refine", disable=not progress):
        with torch.enable_grad():
            loss, terms = objective(x, i, 0)
            if anchor:
                loss = loss + anchor * (x - start).square().flatten(1).mean(1)
            grad = torch.autograd.grad(loss.sum(), x, allow_unused=True)[0] if loss.requires_grad else None
        grad, skipped = _sanitize(torch.zeros_like(x) if grad is None else grad, loss.detach(), None)
        before = x.detach().clone() if skipped.any() else None
        x.grad = grad
        opt.step()
        if before is not None:  # Adam's momentum would still move a skipped sample: put it back
            with torch.no_grad():
                x[skipped] = before[skipped]
        if callback is not None:
            callback({"i": i, "t": 0, "x": x.detach(), "x0": x.detach(), "loss": loss.detach(), "terms": terms,
                      "grad_norm": grad.flatten(1).norm(dim=1), "skipped": skipped})
    return x.detach()
