"""Where a constraint applies: boxes or shapely polygons in canvas fractions, rasterized on its own grid."""

from __future__ import annotations

import warnings

import numpy as np
import shapely
import torch
from shapely.geometry.base import BaseGeometry

from .rendering import Box, check_box

CANVAS = shapely.box(0.0, 0.0, 1.0, 1.0)
MIN_AREA = 1e-10  # in canvas fractions
# Vertices may lie outside the canvas (the region is clipped to it), but one several canvas sides away is a
# pixel coordinate given by mistake: refused.
MAX_REACH = 4.0  # canvas sides beyond the canvas's edge


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
    _check_reach(geometry, name)
    if not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        geometry = shapely.make_valid(geometry)
        warnings.warn(f"{name} was not a valid polygon ({reason}); repaired with shapely.make_valid", stacklevel=3)
    geometry = shapely.intersection(geometry, CANVAS)
    polygons = [g for g in getattr(geometry, "geoms", [geometry])
                if isinstance(g, (shapely.Polygon, shapely.MultiPolygon))]
    area = sum(g.area for g in polygons)
    if area <= MIN_AREA:  # slivers left by clipping are not regions (and do not survive a second pass)
        raise ValueError(f"{name} covers no area of the canvas [0, 1] x [0, 1]: "
                         f"{shapely.to_wkt(geometry, rounding_precision=4)}")
    return shapely.union_all(polygons)


def _check_reach(geometry: BaseGeometry, name: str) -> None:
    if geometry.is_empty:
        return
    left, top, right, bottom = geometry.bounds
    if min(left, top) < -MAX_REACH or max(right, bottom) > 1 + MAX_REACH:
        raise ValueError(f"{name} reaches {geometry.bounds} (bounds as left, top, right, bottom): vertices are canvas "
                         "fractions (0 to 1, origin top left), not pixels; divide pixel coordinates by the image's "
                         "width and height")


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


def parse_points(text: str, name: str = "polygon") -> list[tuple[float, float]]:
    """``"x,y x,y ..."`` (command lines) -> vertices; ``ValueError`` naming the bad token."""
    points = []
    for token in text.replace(";", " ").split():
        try:
            x, y = (float(v) for v in token.split(","))
        except ValueError:
            raise ValueError(f"{name}: expected \"x,y x,y x,y ...\" in canvas fractions, got the token {token!r}"
                             ) from None
        points.append((x, y))
    if len(points) < 3:
        raise ValueError(f"{name} needs at least three x,y vertices, got {len(points)} in {text!r}")
    return points


def known_outside(hole, box: Box, name: str = "polygon") -> BaseGeometry:
    """The canvas outside ``hole`` (a polygon to fill), as the known region of an observation covering
    ``box``; ``ValueError`` if the hole misses the box or covers the whole canvas."""
    hole = as_geometry(hole, name)
    if hole.intersection(shapely.box(*box)).area <= 0:
        raise ValueError(f"{name} does not overlap the image's box {box}: nothing to fill")
    known = shapely.difference(CANVAS, hole)
    if known.area <= 0:
        raise ValueError(f"{name} covers the whole canvas: no pixel would be known")
    return known
