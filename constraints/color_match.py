"""The mean colour of a region should be a given colour."""

from __future__ import annotations

import torch

from ..constraint import Constraint
from ..regions import rasterize, region_box_and_mask


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
    """Squared distance between the region's mean colour and ``color``; region: box or polygon."""

    default_weight = 3.0

    def __init__(self, color, region=(0.0, 0.0, 1.0, 1.0), size=(32, 32), **kwargs):
        target = parse_color(color)
        box, geometry = region_box_and_mask(region, name="ColorMatch region")
        super().__init__(box=box, size=size, **{"name": f"color:{color}"} | kwargs)
        self.target = target
        self.mask = rasterize(geometry, self.box, self.size) if geometry is not None else torch.ones(1, 1, *self.size)

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        mean = (patch * self.mask).sum((2, 3)) / self.mask.sum()
        return (mean - self.target).square().sum(1)
