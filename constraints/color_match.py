"""The mean colour of a region should be a given colour."""

from __future__ import annotations

import torch

from ..regions import rasterize
from ..rendering import check_size
from .base import MAX_GRID_PIXELS, Constraint


def color_label(color) -> str:
    return color if isinstance(color, str) else "rgb(" + ", ".join(f"{float(v):.2f}" for v in color) + ")"


def parse_color(color) -> torch.Tensor:
    """``"#rrggbb"`` or an (r, g, b) triple in [0, 1] -> tensor in [-1, 1]."""
    if isinstance(color, str):
        text = color.lstrip("#")
        if len(text) != 6:
            raise ValueError(f"color must be '#rrggbb' or (r, g, b) in [0, 1], got {color!r}")
        try:
            rgb = [int(text[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        except ValueError:
            raise ValueError(f"color must be '#rrggbb' or (r, g, b) in [0, 1], got {color!r}") from None
    else:
        try:
            rgb = [float(v) for v in color]
        except (TypeError, ValueError):
            raise ValueError(f"color must be '#rrggbb' or (r, g, b) in [0, 1], got {color!r}") from None
        if len(rgb) != 3 or not all(0 <= v <= 1 for v in rgb):
            raise ValueError(f"color must be '#rrggbb' or (r, g, b) in [0, 1], got {color!r}")
    return torch.tensor(rgb) * 2 - 1


class ColorMatch(Constraint):
    """Squared distance between the region's mean colour and ``color``; the region is a ``box`` or a
    ``polygon`` (the mean is taken over the polygon itself). It renders ``size``, by default a grid of
    ``GRID`` pixels on the long side with the box's shape on a canvas of ``canvas`` (height, width)."""

    layout_type = "color"
    default_weight = 3.0
    GRID = 32

    def __init__(self, color, box=None, size=None, canvas=(1, 1), polygon=None, **kwargs):
        target = parse_color(color)
        super().__init__(box=box, polygon=polygon, **{"name": f"color:{color_label(color)}"} | kwargs)
        if size is None:
            left, top, right, bottom = self.box
            h, w = (bottom - top) * canvas[0], (right - left) * canvas[1]
            size = (max(4, round(self.GRID * h / max(h, w))), max(4, round(self.GRID * w / max(h, w))))
        self.size = self.score_size = check_size(size, "size", MAX_GRID_PIXELS)
        self.target, self.color = target, color
        self.mask = rasterize(self.geometry, self.box, self.size) if self.geometry is not None \
            else torch.ones(1, 1, *self.size)

    @property
    def label(self) -> str:
        return color_label(self.color)

    @property
    def label_color(self) -> tuple[float, float, float]:
        """The target colour in [0, 1] (overlays put the label on it)."""
        return tuple(float(v) for v in (self.target.cpu() + 1) / 2)

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        mean = (patch * self.mask).sum((2, 3)) / self.mask.sum()
        return (mean - self.target).square().sum(1)
