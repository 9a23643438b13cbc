"""The constraint interface: a region of the canvas, a render grid, and a loss on what is rendered there.

A new guidance loss is one small subclass in one file::

    class Brightness(Constraint):
        def __init__(self, target, box, **kw):
            super().__init__(box=box, size=(32, 32), **kw)
            self.target = target

        def loss(self, patch):                    # patch: B x 3 x 32 x 32 in [-1, 1], rendered over box
            return (patch.mean((1, 2, 3)) - self.target) ** 2

The solver renders ``box`` at ``size`` from the predicted field at every step, calls ``loss`` (one value per
sample, >= 0; DPS-style normalization takes its square root) and backpropagates through renderer and decoder.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .rendering import Box, check_box, check_size


class Constraint:
    """Base class of guidance terms.

    ``box``: the region's bounding box in canvas fractions ``(left, top, right, bottom)``; ``size``: the
    ``(height, width)`` of the grid this constraint renders; ``weight``: its step size (default: the class's
    ``default_weight``, chosen so that the solver's default ``scale`` of 1 works for it); ``active``: optional
    ``(t_min, t_max)`` window of diffusion timesteps (0..999) in which it guides; ``refine``: whether the
    solver's data-consistency refinement fits it after sampling (default: the class's ``refine``: True for
    observations, False for terms that fitting harder would game, like CLIP); ``name``: its label in
    histories and plots.
    """

    default_weight: float = 1.0
    refine: bool = False

    def __init__(self, box: Sequence[float] = (0.0, 0.0, 1.0, 1.0), size=(64, 64), weight: float | None = None,
                 active: tuple[int, int] | None = None, name: str | None = None, refine: bool | None = None):
        self.box: Box = check_box(box)
        self.size: tuple[int, int] = check_size(size)
        weight = self.default_weight if weight is None else weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self.weight = float(weight)
        if refine is not None:
            if not isinstance(refine, bool):
                raise ValueError(f"refine must be True or False, got {refine!r}")
            self.refine = refine
        if active is not None:
            try:
                lo, hi = (int(v) for v in active)
            except (TypeError, ValueError):
                raise ValueError(f"active must be (t_min, t_max) timesteps, got {active!r}") from None
            if not 0 <= lo <= hi:
                raise ValueError(f"active must satisfy 0 <= t_min <= t_max, got {active!r}")
            active = (lo, hi)
        self.active = active
        self.name = name or type(self).__name__
        self.score_size = self.size  # the grid :meth:`score` measures on (observations: their own image's)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Constraint":
        """Move what this constraint holds to ``device`` (floating tensors also to ``dtype``); returns self.

        The solver calls this once per solve with the model's device and dtype, so :meth:`loss` sees patches
        and its own tensors on the same device. Tensors, ``nn.Module`` s and objects with a ``to(device, dtype)``
        method (a :class:`~infd_solve.clip.ClipModel`) are moved; a module shared by several constraints is moved
        in place once. Override only for state this cannot see (e.g. tensors inside a list).
        """
        for key, value in vars(self).items():
            if torch.is_tensor(value):
                setattr(self, key, value.to(device, dtype) if value.is_floating_point() else value.to(device))
            elif isinstance(value, torch.nn.Module) or callable(getattr(value, "to", None)):
                moved = value.to(device=device, dtype=dtype)
                if moved is not None:
                    setattr(self, key, moved)
        return self

    def is_active(self, t: int) -> bool:
        return self.active is None or self.active[0] <= t <= self.active[1]

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (``B``) of ``patch`` (``B x 3 x H x W`` in [-1, 1], rendered at ``size`` over ``box``)."""
        raise NotImplementedError

    def score(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample measures of a final ``patch`` (rendered as for :meth:`loss`): ``loss``, plus what a
        subclass adds (e.g. PSNR against an observation, CLIP similarity). Used by :meth:`Result.report`."""
        with torch.no_grad():
            return {"loss": self.loss(patch)}

    def __repr__(self) -> str:
        return f"{self.name}(box={tuple(round(v, 4) for v in self.box)}, size={self.size}, weight={self.weight})"


# ------------------------------------------------------------------------------------------ inputs
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def _open(path, name: str, kind: str = "image") -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no {kind} file at {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except OSError as e:
        raise ValueError(f"{name}: cannot read {path} as an image ({e})") from None


def _unit_range(im: Image.Image) -> np.ndarray:
    """16-bit / integer pixels scaled to [0, 1]."""
    array = np.asarray(im, dtype=np.float32)
    return np.clip(array / (65535.0 if im.mode.startswith("I;16") or array.max() > 255 else 255.0), 0, 1)


def load_image(image, name: str = "image") -> torch.Tensor:
    """``1 x 3 x H x W`` (or ``B x 3 x H x W``) float tensor in [-1, 1] from a tensor, PIL image or file path.

    PIL modes other than RGB are converted, with a warning that says so: alpha is composited on black,
    palettes expanded, grayscale replicated, 16-bit scaled to 8-bit range.
    """
    if isinstance(image, (str, Path)):
        return load_image(_open(image, name), f"{name} ({Path(image).name})")
    if isinstance(image, Image.Image):
        return _from_pil(image, name)
    if torch.is_tensor(image):
        x = image.detach().float()
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be 3 x H x W or B x 3 x H x W, got shape {tuple(image.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
        if x.min() < -1 - 1e-3 or x.max() > 1 + 1e-3:
            raise ValueError(f"{name} must be in [-1, 1] (got values in [{x.min():.3g}, {x.max():.3g}]); "
                             "for [0, 1] images pass image * 2 - 1")
        return x.clamp(-1, 1)
    raise ValueError(f"{name} must be a tensor, a PIL image or a file path, got {type(image).__name__}")


def _from_pil(im: Image.Image, name: str) -> torch.Tensor:
    mode = im.mode
    if mode in SIXTEEN_BIT:
        array = _unit_range(im)
        warnings.warn(f"{name}: 16-bit/integer image (mode {mode}) converted to RGB in [-1, 1]", stacklevel=3)
        rgb = np.repeat(array[..., None], 3, axis=-1)
    else:
        if mode != "RGB":
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                im = Image.alpha_composite(background, rgba).convert("RGB")
                warnings.warn(f"{name}: image with alpha (mode {mode}) composited on black and converted to RGB",
                              stacklevel=3)
            else:
                im = im.convert("RGB")
                warnings.warn(f"{name}: image mode {mode} converted to RGB", stacklevel=3)
        rgb = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None] * 2 - 1


def load_mask(mask, name: str = "mask") -> torch.Tensor:
    """``1 x 1 x H x W`` float mask in [0, 1] (1 = observed) from a tensor, PIL image or file path."""
    if isinstance(mask, (str, Path)):
        return load_mask(_open(mask, name, "mask"), f"{name} ({Path(mask).name})")
    if isinstance(mask, Image.Image):
        if mask.mode in SIXTEEN_BIT:
            array = _unit_range(mask)
            warnings.warn(f"{name}: 16-bit/integer mask (mode {mask.mode}) scaled to [0, 1]", stacklevel=2)
        else:
            if mask.mode not in ("L", "1"):
                warnings.warn(f"{name}: mask of mode {mask.mode} converted to grayscale (white = observed)",
                              stacklevel=2)
            array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(array))[None, None]
    if torch.is_tensor(mask):
        m = mask.detach().float()
        while m.dim() < 4:
            m = m[None]
        if m.dim() != 4 or m.shape[:2] != (1, 1):
            raise ValueError(f"{name} must be H x W, 1 x H x W or 1 x 1 x H x W, got shape {tuple(mask.shape)}")
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError(f"{name} must have values in [0, 1]")
        return m
    raise ValueError(f"{name} must be a tensor, a PIL image or a file path, got {type(mask).__name__}")


def working_grid(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down (aspect kept) so that neither side exceeds ``max_side``; unchanged if it fits."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"max_side must be a positive int, got {max_side!r}")
    h, w = size
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def check_aspect(image: torch.Tensor, box: Box, name: str, tolerance: float = 0.02) -> None:
    """An observation must have the aspect ratio of the canvas box it covers (square canvas)."""
    h, w = image.shape[-2:]
    box_aspect = (box[3] - box[1]) / (box[2] - box[0])
    if abs(math.log((h / w) / box_aspect)) > tolerance:
        raise ValueError(f"{name} is {h}x{w} (height/width {h / w:.3f}) but its box {box} has height/width "
                         f"{box_aspect:.3f}; crop or pad the image, or fix the box")
