"""Layouts: a JSON description of what goes where on the canvas, turned into solver settings + constraints.

A layout (every field but ``items`` optional; defaults shown)::

    {
      "canvas": 512,                  # output size: S (square) or [H, W]
      "seed": 0, "steps": 50, "guidance": "dps", "scale": 1.0, "eta": 1.0, "batch_size": 1,
      "normalize": true, "max_grad_norm": null,          # Solver options
      "description": "free text",
      "items": [
        {"type": "clip", "prompt": "clouds", "box": [0.0, 0.0, 1.0, 0.4], "weight": 0.3,
         "negative": ["fog"], "negative_weight": 0.5, "active": [0, 999]},
        {"type": "color", "color": "#2a5caa", "polygon": [[0.1, 0.7], [0.9, 0.7], [0.5, 1.0]]},
        {"type": "observation", "image": "photo.png", "mask": "mask.png", "box": [0.5, 0.5, 1.0, 1.0]},
        {"type": "lowres", "image": "small.png", "box": [0, 0, 1, 1], "noise_sigma": 0.0, "operator": "area"},
        {"type": "perceptual", "image": "reference.png", "box": [0, 0, 0.5, 0.5], "net": "vgg"}
      ]
    }

Boxes are ``[x0, y0, x1, y1]`` = (left, top, right, bottom) in canvas fractions [0, 1], origin at the top
left, y down (the GLIGEN / layout-guidance convention, and :mod:`infd_solve.rendering`'s). Polygons are
``[[x, y], ...]`` in the same fractions; the part inside the canvas counts (a ``color`` item averages over the
polygon itself, a ``clip`` item renders the polygon's bounding box). ``clip`` and ``color`` items need a region
(``box`` or ``polygon``, not both); ``observation``/``lowres``/``perceptual`` items cover ``box`` (default: the
whole canvas). An observation's ``mask`` (white = observed) is an image path or a polygon of
the observed part. Every item accepts ``weight`` (>= 0), ``active`` ([t_min, t_max] diffusion timesteps in
which it guides) and ``name`` (its label in losses and plots). Image paths are relative to the layout file's
directory. The model's field is square: a non-square ``canvas`` renders it stretched, and observations must
have the aspect ratio of their box in canvas fractions.

:func:`parse_layout` validates everything and raises :class:`LayoutError` (a ``ValueError``) whose message
starts with where the problem is, e.g. ``items[3].box: ...`` or ``items[1]: unknown field 'colour' ...``.
"""

from __future__ import annotations

import difflib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from .rendering import check_box, check_size

__all__ = ["LayoutError", "LayoutSettings", "parse_layout", "read_layout", "item_label", "ITEM_TYPES"]

TOP_FIELDS = ("canvas", "seed", "steps", "guidance", "scale", "eta", "batch_size", "normalize", "max_grad_norm",
              "description", "items")
_COMMON = ("type", "weight", "active", "name")
ITEM_FIELDS = {
    "clip": _COMMON + ("prompt", "box", "polygon", "negative", "negative_weight"),
    "color": _COMMON + ("color", "box", "polygon"),
    "observation": _COMMON + ("image", "mask", "box"),
    "lowres": _COMMON + ("image", "box", "noise_sigma", "operator", "factor"),
    "perceptual": _COMMON + ("image", "box", "net"),
}
ITEM_TYPES = tuple(ITEM_FIELDS)
_REQUIRED = {"clip": "prompt", "color": "color", "observation": "image", "lowres": "image", "perceptual": "image"}
MAX_CANVAS = 32768
COLOR_GRID = 32  # long side of the grid a colour constraint renders
MIN_AREA = 1e-10  # a polygon smaller than this fraction of the canvas (~ a pixel at 100k^2) is degenerate


class LayoutError(ValueError):
    """An invalid layout; the message starts with the offending place (``canvas:``, ``items[2].box:``, ...)."""


@dataclass(frozen=True)
class LayoutSettings:
    """Sampling settings of a layout (``canvas`` is ``(height, width)``); ``items`` are the validated item
    dicts, one per constraint, in order: image paths made absolute, ``box`` always set (a polygon's bounding
    box), ``geometry`` the polygon's part inside the canvas (shapely), an observation's polygon ``mask`` as a
    shapely geometry, ``name`` the constraint's name."""

    canvas: tuple[int, int] = (512, 512)
    seed: int = 0
    steps: int = 50
    guidance: str = "dps"
    scale: float = 1.0  # the Solver's default; each item's weight defaults to its constraint's
    eta: float = 1.0
    batch_size: int = 1
    normalize: bool = True
    max_grad_norm: float | None = None
    description: str = ""
    items: list[dict] = field(default_factory=list)
    source: Path | None = None

    def solver_kwargs(self) -> dict:
        """Keyword arguments for :class:`infd_solve.Solver` (besides the model)."""
        return {"steps": self.steps, "eta": self.eta, "guidance": self.guidance, "scale": self.scale,
                "normalize": self.normalize, "max_grad_norm": self.max_grad_norm}


# ----------------------------------------------------------------------------------------- helpers
def _unknown(where: str, key: str, allowed) -> LayoutError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return LayoutError(f"{where}: unknown field {key!r}{hint}; allowed: {', '.join(sorted(allowed))}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v, where: str, minimum: float = 0.0, strict: bool = False) -> float:
    if not _is_number(v) or not math.isfinite(v) or v < minimum or (strict and v == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise LayoutError(f"{where}: must be a finite number {bound}, got {v!r}")
    return float(v)


def _int(v, where: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise LayoutError(f"{where}: must be an integer >= {minimum}, got {v!r}")
    return v


def _canvas(v) -> tuple[int, int]:
    if isinstance(v, list):
        v = tuple(v)
    try:
        h, w = check_size(v, "canvas")
    except ValueError as e:
        raise LayoutError(f"canvas: {e}; e.g. 2048 or [1024, 2048]") from None
    if max(h, w) > MAX_CANVAS:
        raise LayoutError(f"canvas: {v!r} is larger than {MAX_CANVAS} pixels per side")
    return h, w


def _path(v, where: str, base_dir: Path) -> Path:
    if not isinstance(v, str) or not v.strip():
        raise LayoutError(f"{where}: must be an image path (a string), got {v!r}")
    path = (base_dir / Path(v).expanduser()).resolve()
    if not path.is_file():
        raise LayoutError(f"{where}: no image file at {path}")
    return path


def _polygon(v, where: str):
    """A canvas-clipped shapely geometry; errors and repair warnings are prefixed with ``where``."""
    from .regions import as_geometry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            geometry = as_geometry(v, "polygon")
        except ValueError as e:
            raise LayoutError(f"{where}: {e}") from None
    for w in caught:
        warnings.warn(f"{where}: {w.message}", w.category, stacklevel=4)
    # GEOS may leave coordinates a rounding error outside the canvas (e.g. -1e-309): clamp them
    geometry = shapely.transform(geometry, lambda xy: np.clip(xy, 0.0, 1.0))
    if not geometry.is_valid or geometry.area < MIN_AREA:
        raise LayoutError(f"{where}: polygon covers (almost) no area of the canvas (area {geometry.area:.3g}, "
                          f"less than {MIN_AREA:g}): {shapely.to_wkt(geometry, rounding_precision=4)}")
    return geometry


def item_label(item: dict) -> str:
    """A short human label of a validated item (for plots): the prompt, the colour, or the image name."""
    kind = item["type"]
    if kind == "clip":
        return item["prompt"]
    if kind == "color":
        c = item["color"]
        return c if isinstance(c, str) else "rgb(" + ", ".join(f"{float(x):.2f}" for x in c) + ")"
    return f"{kind}: {Path(item['image']).name}"


def read_layout(path: str | Path) -> dict:
    """The JSON object of a layout file (``LayoutError`` if missing or not a JSON object)."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: no layout file there")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LayoutError(f"{path}: not a text (UTF-8 JSON) file") from None
    except json.JSONDecodeError as e:
        raise LayoutError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(obj, dict):
        raise LayoutError(f"{path}: a layout is a JSON object {{\"canvas\": ..., \"items\": [...]}}, "
                          f"got a {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------------------- parsing
def _settings(obj: dict, source: Path | None) -> dict:
    from .sampling import GUIDANCE_MODES, ddim_timesteps

    for key in obj:
        if key not in TOP_FIELDS:
            raise _unknown("layout", key, TOP_FIELDS)
    out: dict[str, Any] = {"source": source}
    if "canvas" in obj:
        out["canvas"] = _canvas(obj["canvas"])
    if "seed" in obj:
        out["seed"] = _int(obj["seed"], "seed", 0)
    if "steps" in obj:
        out["steps"] = _int(obj["steps"], "steps", 1)
        try:
            ddim_timesteps(out["steps"])
        except ValueError as e:
            raise LayoutError(f"steps: {e}") from None
    if "guidance" in obj:
        if obj["guidance"] not in GUIDANCE_MODES:
            raise LayoutError(f"guidance: must be one of {', '.join(GUIDANCE_MODES)}, got {obj['guidance']!r}")
        out["guidance"] = obj["guidance"]
    for key in ("scale", "eta"):
        if key in obj:
            out[key] = _number(obj[key], key)
    if "batch_size" in obj:
        out["batch_size"] = _int(obj["batch_size"], "batch_size", 1)
    if "normalize" in obj:
        if not isinstance(obj["normalize"], bool):
            raise LayoutError(f"normalize: must be true or false, got {obj['normalize']!r}")
        out["normalize"] = obj["normalize"]
    if obj.get("max_grad_norm") is not None:
        out["max_grad_norm"] = _number(obj["max_grad_norm"], "max_grad_norm", strict=True)
    if "description" in obj:
        if not isinstance(obj["description"], str):
            raise LayoutError(f"description: must be a string, got {obj['description']!r}")
        out["description"] = obj["description"]
    return out


def _check_item(raw, i: int, base_dir: Path) -> dict:
    """Field-level validation of one item; returns a normalized copy (``box`` always set, paths absolute)."""
    at = f"items[{i}]"
    if not isinstance(raw, dict):
        raise LayoutError(f"{at}: an item is a JSON object like {{\"type\": \"clip\", \"prompt\": ..., \"box\": ...}}, "
                          f"got {raw!r}")
    if "type" not in raw:
        raise LayoutError(f"{at}: missing field 'type'; one of {', '.join(ITEM_TYPES)}")
    kind = raw["type"]
    if kind not in ITEM_FIELDS:
        close = difflib.get_close_matches(str(kind), ITEM_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LayoutError(f"{at}.type: unknown type {kind!r}{hint}; allowed: {', '.join(ITEM_TYPES)}")
    allowed = ITEM_FIELDS[kind]
    for key in raw:
        if key not in allowed:
            raise _unknown(f"{at} ({kind})", key, allowed)
    required = _REQUIRED[kind]
    if required not in raw:
        raise LayoutError(f"{at}.{required}: missing; a {kind!r} item needs {required!r}")
    item = dict(raw)
    if kind == "clip" and (not isinstance(raw["prompt"], str) or not raw["prompt"].strip()):
        raise LayoutError(f"{at}.prompt: must be a non-empty string, got {raw['prompt']!r}")

    if "box" in raw and "polygon" in raw:
        raise LayoutError(f"{at}: give either 'box' or 'polygon', not both")
    if "box" in raw:
        try:
            item["box"] = check_box(raw["box"], "box")
        except ValueError as e:
            raise LayoutError(f"{at}.box: {e}") from None
    elif "polygon" in raw:
        item["geometry"] = geometry = _polygon(raw["polygon"], f"{at}.polygon")
        item["box"] = check_box(geometry.bounds, f"{at}.polygon bounds")
    elif kind in ("clip", "color"):
        raise LayoutError(f"{at}.box: missing; a {kind!r} item needs a region: 'box' [x0, y0, x1, y1] or "
                          "'polygon' [[x, y], ...] in canvas fractions")
    else:
        item["box"] = (0.0, 0.0, 1.0, 1.0)

    if "weight" in raw:
        item["weight"] = _number(raw["weight"], f"{at}.weight")
    if "active" in raw:
        a = raw["active"]
        if not (isinstance(a, list) and len(a) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in a)
                and 0 <= a[0] <= a[1]):
            raise LayoutError(f"{at}.active: must be [t_min, t_max], integer timesteps with 0 <= t_min <= t_max, "
                              f"got {a!r}")
    if "name" in raw and (not isinstance(raw["name"], str) or not raw["name"].strip()):
        raise LayoutError(f"{at}.name: must be a non-empty string, got {raw['name']!r}")

    if kind == "clip":
        neg = raw.get("negative", [])
        if isinstance(neg, str) or not isinstance(neg, list) or not all(isinstance(s, str) and s.strip() for s in neg):
            raise LayoutError(f"{at}.negative: must be a list of non-empty strings, got {neg!r}")
        if "negative_weight" in raw:
            item["negative_weight"] = _number(raw["negative_weight"], f"{at}.negative_weight")
    elif kind == "color":
        from .constraints.color_match import parse_color

        try:
            parse_color(raw["color"])
        except ValueError as e:
            raise LayoutError(f"{at}.color: {e}") from None
    else:
        item["image"] = _path(raw["image"], f"{at}.image", base_dir)
    if kind == "observation" and "mask" in raw:
        m = raw["mask"]
        if isinstance(m, str):
            item["mask"] = _path(m, f"{at}.mask", base_dir)
        else:
            item["mask"] = _polygon(m, f"{at}.mask")
    if kind == "lowres":
        if "noise_sigma" in raw:
            item["noise_sigma"] = _number(raw["noise_sigma"], f"{at}.noise_sigma")
        from .constraints.lowres_observation import OPERATORS

        if "operator" in raw and raw["operator"] not in OPERATORS:
            raise LayoutError(f"{at}.operator: must be one of {', '.join(OPERATORS)}, got {raw['operator']!r}")
        if "factor" in raw:
            _int(raw["factor"], f"{at}.factor", 1)
    if kind == "perceptual" and "net" in raw and not isinstance(raw["net"], str):
        raise LayoutError(f"{at}.net: must be a string such as 'vgg' or 'alex', got {raw['net']!r}")
    return item


def _color_grid(box, canvas) -> tuple[int, int]:
    """Grid of a colour constraint: COLOR_GRID on the long side, the box's on-canvas aspect ratio."""
    h = (box[3] - box[1]) * canvas[0]
    w = (box[2] - box[0]) * canvas[1]
    scale = COLOR_GRID / max(h, w)
    return max(4, round(h * scale)), max(4, round(w * scale))


def _build(item: dict, canvas, clip, name: str):
    from . import constraints as C

    common = {k: item[k] for k in ("weight", "active") if k in item}
    common["name"] = name
    region = item.get("geometry", item["box"])
    kind = item["type"]
    if kind == "clip":
        return C.ClipBox(item["prompt"], region, clip=clip, negative_prompts=item.get("negative", ()),
                         **({"negative_weight": item["negative_weight"]} if "negative_weight" in item else {}),
                         canvas=canvas, **common)
    if kind == "color":
        return C.ColorMatch(item["color"], region, size=_color_grid(item["box"], canvas), **common)
    if kind == "observation":
        return C.MaskedObservation(item["image"], mask=item.get("mask"), box=item["box"], **common)
    if kind == "lowres":
        extra = {k: item[k] for k in ("noise_sigma", "operator", "factor") if k in item}
        return C.LowResObservation(item["image"], box=item["box"], **extra, **common)
    return C.PerceptualMatch(item["image"], box=item["box"], **({"net": item["net"]} if "net" in item else {}),
                             **common)


_DEFAULT_NAMES = {"observation": "observation", "lowres": "low-res", "perceptual": "perceptual"}


def _default_name(item: dict) -> str:
    if item["type"] in _DEFAULT_NAMES:
        return _DEFAULT_NAMES[item["type"]]
    return f"{item['type']}:{item_label(item)}"


def parse_layout(obj_or_path, clip=None, base_dir: str | Path | None = None, device=None):
    """``(LayoutSettings, [Constraint, ...])`` from a layout dict or a JSON file path.

    ``clip``: a :class:`infd_solve.clip.ClipModel`, a path / name for :func:`infd_solve.load_clip`, or
    ``None`` for the default domain CLIP; loaded only if the layout has ``clip`` items. ``base_dir``: where
    relative image paths start (default: the layout file's directory, or the working directory for a dict).
    ``device``: where the constraints (and a CLIP loaded here) are placed, normally the model's; the solver
    moves them to the model's device and dtype in any case. Raises :class:`LayoutError` naming the offending
    field.
    """
    source = None
    if isinstance(obj_or_path, (str, Path)):
        source = Path(obj_or_path).resolve()
        obj = read_layout(source)
    elif isinstance(obj_or_path, dict):
        obj = obj_or_path
    else:
        raise LayoutError(f"layout: expected a dict or a path to a JSON file, got {type(obj_or_path).__name__}")
    base = Path(base_dir) if base_dir is not None else (source.parent if source else Path.cwd())

    values = _settings(obj, source)
    if "items" not in obj:
        raise LayoutError("items: missing; a layout needs a list of items (constraints)")
    raw_items = obj["items"]
    if not isinstance(raw_items, list) or not raw_items:
        raise LayoutError(f"items: must be a non-empty list of item objects, got {raw_items!r}")
    items = [_check_item(raw, i, base) for i, raw in enumerate(raw_items)]
    canvas = values.get("canvas", LayoutSettings.canvas)

    names: dict[str, int] = {}
    for i, item in enumerate(items):
        if "name" in item:
            if item["name"] in names:
                raise LayoutError(f"items[{i}].name: {item['name']!r} is already used by items[{names[item['name']]}]")
            names[item["name"]] = i
    for i, item in enumerate(items):
        if "name" not in item:
            name = _default_name(item)
            item["name"] = name if name not in names else f"{name} #{i}"
            names[item["name"]] = i

    if any(item["type"] == "clip" for item in items) and not hasattr(clip, "encode_text"):
        from .clip import load_clip

        clip = load_clip(clip if clip is not None else "default", device=device)

    built = []
    for i, item in enumerate(items):
        try:
            built.append(_build(item, canvas, clip, item["name"]).to(device))
        except (ValueError, FileNotFoundError) as e:
            raise LayoutError(f"items[{i}] ({item['type']}): {e}") from None
    return LayoutSettings(**values, items=items), built
