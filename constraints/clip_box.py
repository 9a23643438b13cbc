"""Text guidance in a region: the region, seen undistorted at CLIP's input size, should match a prompt."""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import checks
from ..rendering import check_size
from .base import MAX_GRID_PIXELS, MAX_WEIGHT, Constraint

MIN_COVERAGE = 0.75  # a random view of a polygon item is a square at least this much inside the polygon
VIEW_STRIDE = 2  # pixels between the candidate positions of random views


def view_count(aspect: float, max_views: int, tolerance: float = 1.1) -> int:
    """Square views along the long side of a box of ``aspect`` (long / short side): enough that the box is
    squashed by at most ``tolerance``, but at most ``max_views``."""
    return max_views if aspect > max_views * tolerance else max(1, math.ceil(aspect / tolerance))


def _pair(value, name: str, low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (checks.number(v, name, low, high) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be (min, max), got {value!r}") from None
    if a > b:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {value!r}")
    return a, b


class ClipBox(Constraint):
    """Minimize ``1 - cos(image, prompt)`` (+ ``negative_weight`` times the mean cosine to negative prompts).

    ``clip``: what :func:`infd_solve.load_clip` returns (the default domain CLIP, or any open_clip model from a
    local file); ``None`` loads the default. The region is a ``box`` or a ``polygon``.

    CLIP sees squares. The region's bounding box is rendered on a grid of its own shape (CLIP's size on the
    short side), so the content is never squashed (squashed guidance draws content stretched by the inverse
    factor). ``canvas``: the canvas's ``(height, width)`` (or any pair with its aspect ratio), which gives the
    box its true shape. What CLIP sees of that grid at each step:

    * ``cutouts`` > 0: that many random square views ("cutouts", as in CLIP-guided diffusion): sides
      ``cutout_scale`` of the grid's short side, anywhere in the region, flipped half of the time, each
      resized to CLIP's input; the loss is their mean. Guidance then cannot win by a pattern that only one
      framing of the region reads as the prompt. For a polygon, views are squares at least 75 % inside it.
      The draws come from each sample's seed and the step (:meth:`begin_step`), never from the global RNG.
    * ``cutouts`` = 0: ``n`` fixed, evenly spaced, overlapping square views that cover the box (``max_views``
      bounds ``n``; boxes longer than that are squashed by the remainder).

    Scores (:meth:`similarity`) always use the fixed views, so they do not depend on the draws.

    Locality: guidance changes only the latent cells under the region and ``margin`` cells around it
    (:meth:`latent_region`; ``None``: everywhere), and a polygon's guidance moves only the pixels inside it
    (CLIP still sees the whole view).

    The defaults (16 cutouts, margin 1, weight 0.9) were chosen with the independent layout judge
    (``recipes/eval_layouts.py``; the comparison is in ``pretrained/MODEL_CARD.md``).
    """

    layout_type = "clip"
    default_weight = 0.9

    def __init__(self, prompt: str, box=None, clip=None, negative_prompts: Sequence[str] = (),
                 negative_weight: float = 0.5, canvas: Sequence[float] = (1, 1), max_views: int = 4,
                 polygon=None, cutouts: int = 16, cutout_scale: Sequence[float] = (0.5, 1.0),
                 margin: int | None = 1, **kwargs):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if isinstance(negative_prompts, str) or not all(isinstance(p, str) and p.strip() for p in negative_prompts):
            raise ValueError(f"negative_prompts must be a list of non-empty strings, got {negative_prompts!r}")
        negative_weight = checks.number(negative_weight, "negative_weight", 0.0, MAX_WEIGHT)
        max_views = checks.integer(max_views, "max_views", 1, 64)
        self.cutouts = checks.integer(cutouts, "cutouts", 0, 64)
        self.cutout_scale = _pair(cutout_scale, "cutout_scale", 0.05, 1.0)
        self.margin = None if margin is None else checks.integer(margin, "margin", 0, 1024)
        try:
            canvas_h, canvas_w = (float(v) for v in canvas)
        except (TypeError, ValueError):
            raise ValueError(f"canvas must be (height, width), got {canvas!r}") from None
        if not (canvas_h > 0 and canvas_w > 0 and math.isfinite(canvas_h * canvas_w)):
            raise ValueError(f"canvas must be (height, width) > 0, got {canvas!r}")
        super().__init__(box=box, polygon=polygon, **{"name": f"clip:{prompt}"} | kwargs)
        if clip is None or isinstance(clip, str):
            from ..clip import load_clip

            clip = load_clip(clip or "default")
        left, top, right, bottom = self.box
        height, width = (bottom - top) * canvas_h, (right - left) * canvas_w
        aspect = max(height, width) / min(height, width) if min(height, width) > 0 else math.inf
        self.views = view_count(aspect, max_views)
        # n views cover n squares: a longer box is squashed by the remainder (at most 10 % below max_views)
        s, long_side = clip.size, round(clip.size * min(aspect, self.views))
        self.size = self.score_size = check_size((s, long_side) if width >= height else (long_side, s), "size",
                                                 MAX_GRID_PIXELS)
        clip.check_prompt(prompt)
        for negative in negative_prompts:
            clip.check_prompt(negative, "negative_prompts")
        self.prompt, self.clip, self.negative_weight = prompt, clip, float(negative_weight)
        with torch.no_grad():
            self.text = clip.encode_text([prompt])
            self.negatives = clip.encode_text(list(negative_prompts)) if negative_prompts else None
        # where guidance may move pixels: inside a polygon only; None: the whole grid
        self.pixel_mask = self._coverage(self.box, self.size) if self.geometry is not None else None
        # a numpy array, so Constraint.to leaves it on the host: views are drawn there, without device syncs
        self.candidates = self._candidates().numpy() if self.cutouts else None
        self.salt = zlib.crc32(repr((self.name, self.box)).encode())  # constraints draw different views
        self._keys: tuple[list[int], int] = ([], 0)

    def _coverage(self, box, size: tuple[int, int]) -> torch.Tensor:
        """``1 x 1 x H x W`` share of each pixel of ``box`` on a ``size`` grid inside the polygon."""
        from ..regions import rasterize

        return rasterize(self.geometry, box, size)

    def _candidates(self) -> torch.Tensor:
        """``N x 3`` (side, top, left) in pixels of the grid: the squares a random view may be, at least
        ``MIN_COVERAGE`` inside the region (for a thin polygon: the best-covered twentieth of them)."""
        h, w = self.size
        short = min(h, w)
        lo, hi = self.cutout_scale
        sides = sorted({max(2, round(short * f)) for f in torch.linspace(lo, hi, 6).tolist()})
        rows = []
        for side in sides:
            ys, xs = torch.arange(0, h - side + 1, VIEW_STRIDE), torch.arange(0, w - side + 1, VIEW_STRIDE)
            grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
            rows.append(torch.cat([torch.full((len(grid), 1), side), grid], 1))
        candidates = torch.cat(rows)
        if self.pixel_mask is None:
            return candidates
        integral = F.pad(self.pixel_mask[0, 0].double().cumsum(0).cumsum(1), (1, 0, 1, 0))
        side, top, left = candidates.unbind(1)
        inside = (integral[top + side, left + side] - integral[top, left + side] - integral[top + side, left]
                  + integral[top, left]) / (side * side).double()
        keep = inside >= MIN_COVERAGE
        if not keep.any():
            keep = inside >= torch.quantile(inside, 0.95)
        return candidates[keep]

    @property
    def label(self) -> str:
        return self.prompt

    # ------------------------------------------------------------------------------------------- guidance
    def begin_step(self, step: int, t: int, keys: Sequence[int]) -> None:
        self._keys = (list(keys), int(step))

    def latent_region(self, shape: tuple[int, int]) -> torch.Tensor | None:
        """The latent cells under the region (any overlap), grown by ``margin`` cells; ``None`` without one."""
        if self.margin is None:
            return None
        h, w = shape
        if self.geometry is not None:
            cells = self._coverage((0.0, 0.0, 1.0, 1.0), shape)[0, 0] > 0
        else:
            left, top, right, bottom = self.box
            cells = torch.zeros(h, w, dtype=torch.bool)
            cells[math.floor(top * h):math.ceil(bottom * h), math.floor(left * w):math.ceil(right * w)] = True
        grown = F.max_pool2d(cells[None, None].float(), 2 * self.margin + 1, 1, self.margin)
        return grown[0, 0]

    def random_views(self, patch: torch.Tensor, keys: Sequence[int], step: int) -> torch.Tensor:
        """``B*cutouts x 3 x S x S`` random views of each rendered patch (S: CLIP's input side), drawn from
        each sample's key and the step."""
        b, k, s = patch.shape[0], self.cutouts, self.clip.size
        if len(keys) != b:
            keys = list(range(b))
        thetas = []
        h, w = patch.shape[-2:]
        candidates = torch.from_numpy(self.candidates)  # drawn on the CPU: the same views on every device
        for key in keys:
            g = torch.Generator().manual_seed((int(key) * 1_000_003 + step * 7919 + self.salt) % 2**63)
            side, top, left = candidates[torch.randint(len(candidates), (k,), generator=g)].double().unbind(1)
            flip = torch.where(torch.rand(k, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
            theta = torch.zeros(k, 2, 3, dtype=torch.float64)
            theta[:, 0, 0] = flip * side / w
            theta[:, 0, 2] = (left + side / 2) / w * 2 - 1
            theta[:, 1, 1] = side / h
            theta[:, 1, 2] = (top + side / 2) / h * 2 - 1
            thetas.append(theta)
        theta = torch.cat(thetas).to(patch.dtype)
        if patch.device.type == "cuda":  # pinned + non-blocking: the copy does not wait for the device
            theta = theta.pin_memory().to(patch.device, non_blocking=True)
        theta = theta.to(patch.device)
        grid = F.affine_grid(theta, (b * k, 3, s, s), align_corners=False)
        return F.grid_sample(patch.repeat_interleave(k, 0), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)

    def encode_views(self, patch: torch.Tensor) -> torch.Tensor:
        """``B x views x D`` CLIP embeddings of the fixed square views of each rendered patch."""
        s, (h, w), n = self.clip.size, patch.shape[-2:], self.views
        if n == 1:
            return self.clip.encode_image(patch)[:, None]
        long_side = max(h, w)
        starts = [round(k * (long_side - s) / (n - 1)) for k in range(n)]
        views = [patch[..., :, a : a + s] if w >= h else patch[..., a : a + s, :] for a in starts]
        features = self.clip.encode_image(torch.stack(views, 1).flatten(0, 1))
        return features.view(patch.shape[0], n, -1)

    def similarity(self, patch: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each rendered patch to the prompt (mean over its fixed views)."""
        return (self.encode_views(patch) @ self.text.T)[..., 0].mean(1)

    def score(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss`` and ``similarity`` (cosine to the prompt, mean over the fixed views)."""
        with torch.no_grad():
            return {"loss": self._loss(self.encode_views(patch)), "similarity": self.similarity(patch)}

    def _loss(self, features: torch.Tensor) -> torch.Tensor:
        loss = 1 - (features @ self.text.T)[..., 0]
        if self.negatives is not None:
            loss = loss + self.negative_weight * (features @ self.negatives.T).mean(-1).clamp_min(0)
        return loss.mean(1)

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        if self.pixel_mask is not None:  # CLIP sees everything; guidance moves only what is inside
            m = self.pixel_mask.to(patch)
            patch = patch * m + patch.detach() * (1 - m)
        if not self.cutouts:
            return self._loss(self.encode_views(patch))
        keys, step = self._keys
        views = self.random_views(patch, keys, step)
        return self._loss(self.clip.encode_image(views).view(patch.shape[0], self.cutouts, -1))
