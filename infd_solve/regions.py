"""Where a constraint applies: boxes or shapely polygons in canvas fractions, rasterized on its own grid."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import shapely
import torch
from shapely.geometry.base import BaseGeometry

from .rendering import Box, check_box

CANVAS = shapely.box(0.0, 0.0, 1.0, 1.0)
MIN_AREA = 1e-10  # in canvas fractions


def as_geometry(region, name: str = "region") -> BaseGeometry:
    """A polygonal shapely geometry in canvas fractions (x right, y down), repaired if invalid.

    Accepts a shapely (Multi)Polygon, or a list of ``(x, y)`` vertices. Raises ``ValueError`` if the region
    is empty, not an area, or does not intersect the canvas.
    """
    if isinstance(region, BaseGeometry):
        geometry = region
    else:
        try:
            points = np.asarray(region, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a shapely polygon or a list of (x, y) vertices, got {region!r}") from None
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
            raise ValueError(f"{name} needs at least three (x, y) vertices, got {region!r}")
        if not np.isfinite(points).all():
            raise ValueError(f"{name} has NaN or inf vertices")
        geometry = shapely.Polygon(points)
    if not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        geometry = shapely.make_valid(geometry)
        warnings.warn(f"{name} was not a valid polygon ({reason}); repaired with shapely.make_valid", stacklevel=3)
    geometry = shapely.intersection(geometry, CANVAS)
    polygons = [g for g in getattr(geometry, "geoms", [geometry]) if isinstance(g, (shapely.Polygon, shapely.MultiPolygon))]
    area = sum(g.area for g in polygons)
    if area <= MIN_AREA:  # slivers left by clipping are not regions (and do not survive a second pass)
        raise ValueError(f"{name} covers no area of the canvas [0, 1] x [0, 1]: {shapely.to_wkt(geometry, rounding_precision=4)}")
    return shapely.union_all(polygons)


def bounding_box(geometry: BaseGeometry) -> Box:
    # clipping can leave coordinates like -2e-309 just outside the canvas
    left, top, right, bottom = (min(max(v, 0.0), 1.0) for v in geometry.bounds)
    return check_box((left, top, right, bottom), "polygon bounds")


def rasterize(geometry: BaseGeometry, box: Box, size: tuple[int, int], samples: int = 4) -> torch.Tensor:
    """Soft coverage mask ``1 x 1 x H x W`` of ``geometry`` on the pixel grid of ``box`` at ``size``.

    Each pixel is supersampled ``samples x samples`` times with shapely's vectorized ``intersects_xy``
    (points on the boundary count as inside), so edges get fractional weights.
    """
    left, top, right, bottom = box
    height, width = size
    offsets = (np.arange(samples) + 0.5) / samples
    ys = top + (bottom - top) * (np.arange(height)[:, None] + offsets[None, :]).ravel() / height
    xs = left + (right - left) * (np.arange(width)[:, None] + offsets[None, :]).ravel() / width
    inside = shapely.intersects_xy(geometry, xs[None, :], ys[:, None])  # (H*s, W*s), prepared automatically
    coverage = inside.reshape(height, samples, width, samples).mean(axis=(1, 3))
    return torch.from_numpy(coverage.astype(np.float32))[None, None]


def region_box_and_mask(region, size: tuple[int, int] | None = None, name: str = "region"):
    """``(box, geometry or None)``: a 4-sequence is a box; anything else is a polygon (box = its bounds)."""
    if isinstance(region, Sequence) and not isinstance(region, str) and len(region) == 4 and \
            all(isinstance(v, (int, float)) for v in region):
        return check_box(region, name), None
    geometry = as_geometry(region, name)
    return bounding_box(geometry), geometry
