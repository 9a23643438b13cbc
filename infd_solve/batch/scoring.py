"""Scoring a job's outputs: the report's measures for a plain image, and PSNR and SSIM against the truth on
what is written (8-bit)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def _quantized(image: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file of ``image`` holds, back in [-1, 1] (metrics measure what is written)."""
    from ..io import to_uint8

    return to_uint8(image).movedim(-1, -3).double() / 127.5 - 1


def _resized(image: torch.Tensor, size) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def _score_image(constraints, image: torch.Tensor) -> dict:
    """``Result.report()``'s measures for an image that is not a field: each constraint scores the image
    resampled to its ``score_size`` (the same size for the tasks' whole-canvas observations)."""
    out = {}
    for c in constraints:
        c.to("cpu", torch.float32)
        with torch.no_grad():
            scores = c.score(_resized(image, c.score_size))
        out[c.name] = {k: v.double().cpu().tolist() for k, v in scores.items()}
    return out


def _metrics(outputs: list[Path], result, image, truth: torch.Tensor, canvas) -> dict:
    """PSNR and SSIM against the truth, per sample, on the 8-bit output at the truth's size (the written file
    when the canvas is that size; else the result rendered, or the image resampled, at it)."""
    from ..io import load_image
    from ..metrics import psnr, ssim

    size = tuple(truth.shape[-2:])
    if tuple(canvas) == size:
        images = [load_image(p) for p in outputs]
    elif result is not None:
        images = list(_quantized(result.render(size).cpu()).split(1))
    else:
        images = [_quantized(_resized(image, size))]
    values = {"psnr": [], "ssim": []}
    for x in images:
        x, t = x.double(), truth.double()
        values["psnr"].append(float(psnr(x, t)))
        values["ssim"].append(float(ssim(x, t)) if min(size) >= 11 else float("nan"))
    return values
