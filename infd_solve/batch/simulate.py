"""Observations simulated from a truth for task jobs: the constraint's operator, then seeded Gaussian noise;
inpainting masks (the format: :mod:`infd_solve.batch`)."""

from __future__ import annotations

import numpy as np
import torch

from .jobs import Job, _box, _path


def _sr_observe(truth: torch.Tensor, factor: int, operator: str) -> torch.Tensor:
    """The truth seen by the SR camera: the operator of ``LowResObservation`` (``render`` is the area average
    of the canvas: what rendering on the coarse grid approximates)."""
    from ..operators import Downsample

    h, w = truth.shape[-2:]
    low = (max(1, round(h / factor)), max(1, round(w / factor)))
    return Downsample((h, w), low, "bicubic" if operator == "bicubic" else "area")(truth)


def _simulate(job: Job, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """The observation of ``truth`` for a task job (and its mask): the constraint's operator, then seeded
    Gaussian noise, clamped to [-1, 1] (the constraints take images in that range)."""
    from ..operators import Blur

    spec = job.spec
    noise_seed = spec.get("noise_seed", spec.get("seed", 0))
    rng = np.random.default_rng(noise_seed)
    mask, details = None, {"noise_sigma": spec.get("noise_sigma", 0.0), "noise_seed": noise_seed}
    if job.task == "sr":
        clean = _sr_observe(truth, spec.get("factor", 4), spec.get("operator", "area"))
    elif job.task == "deblur":
        kernel = spec["kernel"]
        kernel = _path(kernel, "kernel", job.base_dir) if isinstance(kernel, str) else kernel
        clean = Blur(kernel, truth.shape[-2:]).to(truth.dtype)(truth)
    else:
        h, w = truth.shape[-2:]
        if "missing" in spec:  # exactly that share of the pixels, all channels
            unknown = rng.permutation(h * w)[: round(spec["missing"] * h * w)]
            flat = np.ones(h * w, dtype=np.float32)
            flat[unknown] = 0
            mask = torch.from_numpy(flat.reshape(h, w))[None, None]
        else:
            mask = _hole_mask(spec["hole"], (h, w))
        clean = truth
    sigma = spec.get("noise_sigma", 0.0)
    noisy = clean + sigma * torch.from_numpy(rng.standard_normal(clean.shape)).to(clean.dtype) if sigma else clean
    details["clamped_fraction"] = float(((noisy < -1) | (noisy > 1)).double().mean()) if sigma else 0.0
    return noisy.clamp(-1, 1), mask, details


def _hole_mask(hole, size) -> torch.Tensor:
    """1 = observed; ``hole`` (fractions) snapped to the pixel edges nearest to it."""
    h, w = size
    left, top, right, bottom = _box(hole, "hole")
    mask = torch.ones(1, 1, h, w)
    mask[..., round(top * h) : round(bottom * h), round(left * w) : round(right * w)] = 0
    if mask.sum() == 0:
        raise ValueError("hole: covers every pixel; nothing is observed")
    return mask
