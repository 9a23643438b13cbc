"""Text guidance in a box: the box, seen undistorted at CLIP's input size, should match a prompt."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import checks
from ..rendering import check_size
from .base import MAX_GRID_PIXELS, MAX_WEIGHT, Constraint


def view_count(aspect: float, max_views: int, tolerance: float = 1.1) -> int:
    """Square views along the long side of a box of ``aspect`` (long / short side): enough that the box is
    squashed by at most ``tolerance``, but at most ``max_views``."""
    return max_views if aspect > max_views * tolerance else max(1, math.ceil(aspect / tolerance))


class ClipBox(Constraint):
    """Minimize ``1 - cos(image, prompt)`` (+ ``negative_weight`` times the mean cosine to negative prompts).

    ``clip``: what :func:`infd_solve.load_clip` returns (the default domain CLIP, or any open_clip model from a
    local file); ``None`` loads the default. The region is a ``box`` or a ``polygon`` (its bounding box is
    rendered).

    CLIP sees squares. A square box is rendered at CLIP's input size; an elongated one on a grid of the box's
    own shape (CLIP's size on the short side), cut into ``n`` evenly spaced, overlapping square views that
    cover it, and the loss is the mean over the views, so the content is never squashed (squashed guidance
    draws content stretched by the inverse factor). ``canvas``: the canvas's ``(height, width)`` (or any
    pair with its aspect ratio), which gives the box its true shape; ``max_views`` bounds the cost (``n``
    CLIP passes per step); boxes longer than that are squashed by the remainder.
    """

    layout_type = "clip"
    default_weight = 0.3

    def __init__(self, prompt: str, box=None, clip=None, negative_prompts: Sequence[str] = (),
                 negative_weight: float = 0.5, canvas: Sequence[float] = (1, 1), max_views: int = 4,
                 polygon=None, **kwargs):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if isinstance(negative_prompts, str) or not all(isinstance(p, str) and p.strip() for p in negative_prompts):
            raise ValueError(f"negative_prompts must be a list of non-empty strings, got {negative_prompts!r}")
        negative_weight = checks.number(negative_weight, "negative_weight", 0.0, MAX_WEIGHT)
        max_views = checks.integer(max_views, "max_views", 1, 64)
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

    @property
    def label(self) -> str:
        return self.prompt

    def encode_views(self, patch: torch.Tensor) -> torch.Tensor:
        """``B x views x D`` CLIP embeddings of the square views of each rendered patch."""
        s, (h, w), n = self.clip.size, patch.shape[-2:], self.views
        if n == 1:
            return self.clip.encode_image(patch)[:, None]
        long_side = max(h, w)
        starts = [round(k * (long_side - s) / (n - 1)) for k in range(n)]
        views = [patch[..., :, a : a + s] if w >= h else patch[..., a : a + s, :] for a in starts]
        features = self.clip.encode_image(torch.stack(views, 1).flatten(0, 1))
        return features.view(patch.shape[0], n, -1)

    def similarity(self, patch: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each rendered patch to the prompt (mean over its views)."""
        return (self.encode_views(patch) @ self.text.T)[..., 0].mean(1)

    def score(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss`` and ``similarity`` (cosine to the prompt, mean over the views)."""
        scores = super().score(patch)
        with torch.no_grad():
            scores["similarity"] = self.similarity(patch)
        return scores

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        features = self.encode_views(patch)
        loss = 1 - (features @ self.text.T)[..., 0]
        if self.negatives is not None:
            loss = loss + self.negative_weight * (features @ self.negatives.T).mean(-1).clamp_min(0)
        return loss.mean(1)
