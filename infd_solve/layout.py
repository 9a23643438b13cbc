"""Layouts: a JSON description of what goes where on the canvas, turned into solver settings + constraints.

A layout (every field but ``items`` optional; defaults shown)::

    {
      "canvas": 512,                  # output size: S (square) or [H, W]
      "seed": 0, "batch_size": 1,
      "sampler": "dps", "steps": 50, "guidance_scale": 1.0, "eta": 1.0, ...,  # the solver's options
      "description": "free text",
      "items": [
        {"type": "clip", "prompt": "clouds", "box": [0.0, 0.0, 1.0, 0.4], "negative_prompts": ["fog"]},
        {"type": "color", "color": "#2a5caa", "polygon": [[0.1, 0.7], [0.9, 0.7], [0.5, 1.0]]},
        {"type": "observation", "image": "photo.png", "mask": "mask.png", "box": [0.5, 0.5, 1.0, 1.0]},
        {"type": "lowres", "image": "small.png", "noise_sigma": 0.0, "operator": "area"},
        {"type": "perceptual", "reference": "reference.png", "box": [0, 0, 0.5, 0.5], "net": "vgg"}
      ]
    }

Every other top-level field is a solver option (:mod:`infd_solve.options`: ``sampler``, ``steps``,
``refine_steps``, ``keep_outside``, ``consistency``, ... and the chosen sampler family's own, such as
``guidance_scale`` and ``eta``), checked by the same table as :class:`~infd_solve.Solver`'s keywords.

An item's ``type`` names a constraint class (its ``layout_type``; every built-in constraint and any subclass
of :class:`~infd_solve.constraints.Constraint` that sets one), and its other fields are that class's
constructor arguments: ``box`` (``[x0, y0, x1, y1]`` = left, top, right, bottom in canvas fractions [0, 1],
origin top left, y down: the GLIGEN / layout-guidance convention), ``polygon`` (``[[x, y], ...]`` in the same
fractions) where the class takes one, ``weight``, ``active`` ([t_min, t_max] diffusion timesteps in which it
guides), ``name``, ``refine``, and the class's own. File paths are relative to the layout file's directory.
The constructors check the values; this module checks only the layout's own structure, so a new constraint
needs no edit here. The model's field is square: a non-square ``canvas`` renders it stretched.

A type of your own is a class defined in a module that has been imported (defining it registers it), or one
that an installed package declares as an entry point of the group ``infd_solve.constraints``, named after the
type; such a package's ``pyproject.toml`` has::

    [project.entry-points."infd_solve.constraints"]
    brightness = "my_package.constraints:Brightness"

and its module is imported when a layout first names the type (``infd-layout`` and ``solve_batch.py`` also
take ``--import MODULE_OR_FILE``). :func:`solve_layout` solves a layout file in one call.

:func:`parse_layout` raises :class:`LayoutError` (a ``ValueError``) whose message starts with where the
problem is, e.g. ``items[3].box: ...`` or ``items[1] (color): unknown field 'colour' ...``.
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import checks
from .checks import unknown_field
from .constraints.base import CONTEXT_ARGUMENTS  # noqa: F401  (part of the layout format)
from .rendering import MAX_CANVAS, check_size

__all__ = ["LayoutError", "LayoutSettings", "LayoutContext", "parse_layout", "read_layout", "solve_layout"]

LAYOUT_FIELDS = ("canvas", "seed", "batch_size", "description", "items")  # besides the solver's options
ENTRY_POINT_GROUP = "infd_solve.constraints"  # entry point name: a layout type; value: its Constraint class
MAX_ITEMS = 256


class LayoutError(ValueError):
    """An invalid layout; the message starts with the offending place (``canvas:``, ``items[2].box:``, ...)."""


@dataclass(frozen=True)
class LayoutSettings:
    """Sampling settings of a layout (``canvas`` is ``(height, width)``) and the solver options it sets
    (``options``, checked); ``settings.steps``, ``settings.sampler``, ... read them with defaults filled in
    (``sampler`` ``"auto"`` and ``steps`` ``None`` until a solve knows its constraints)."""

    canvas: tuple[int, int] = (512, 512)
    seed: int = 0
    batch_size: int = 1
    description: str = ""
    source: Path | None = None
    options: dict = field(default_factory=dict)

    def __getattr__(self, name):
        from .solver import solver_options

        options = solver_options(**self.__dict__.get("options", {}))
        if name in options and name != "timesteps":
            return options[name]
        raise AttributeError(f"'LayoutSettings' object has no attribute {name!r}")

    def solver_kwargs(self) -> dict:
        """Keyword arguments for :class:`infd_solve.Solver` (besides the model)."""
        return dict(self.options)


def _solver_options(given: dict) -> dict:
    """The options ``given``, checked and normalized (the others stay unset: a solve fills them in)."""
    from .solver import solver_options

    options = solver_options(**given)
    return {name: options[name] for name in given}


@dataclass
class LayoutContext:
    """What items are built with besides their own fields: the canvas (``(height, width)``), the CLIP for
    constraints that take one (loaded on first use), the directory relative paths start from, the device."""

    canvas: tuple[int, int]
    base_dir: Path
    clip_source: Any = None
    device: Any = None

    @cached_property
    def clip(self):
        if hasattr(self.clip_source, "encode_text"):
            return self.clip_source
        from .clip import load_clip

        return load_clip(self.clip_source if self.clip_source is not None else "default", device=self.device)

    def resolve_path(self, field_name: str, value: str) -> Path:
        """``value`` relative to ``base_dir``; ``ValueError`` naming the field if no file is there."""
        if not value.strip():
            raise ValueError(f"{field_name} must be a file path, got {value!r}")
        path = (self.base_dir / Path(value).expanduser()).resolve()
        if not path.is_file():
            raise ValueError(f"{field_name}: no file at {path}")
        return path


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
    except RecursionError:
        raise LayoutError(f"{path}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise LayoutError(f"{path}: a layout is a JSON object {{\"canvas\": ..., \"items\": [...]}}, "
                          f"got a {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------------------- parsing
def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _where(message: str, fields) -> str | None:
    """The field a constructor's message is about: messages start with the argument's name."""
    match = re.match(r"[A-Za-z_]\w*", message)
    return match.group(0) if match and match.group(0) in fields else None


def _settings(obj: dict, source: Path | None) -> dict:
    from .options import OptionError

    given = {key: value for key, value in obj.items() if key not in LAYOUT_FIELDS}
    out: dict[str, Any] = {"source": source}
    try:
        out["options"] = _solver_options(given)
    except OptionError as e:
        if e.reason.startswith("unknown option"):
            from .solver import option_names

            allowed = [*LAYOUT_FIELDS, *option_names(given.get("sampler", "dps") if e.field != "sampler" else "dps")]
            raise LayoutError(f"layout: {unknown_field(e.field, allowed)}") from None
        raise LayoutError(str(e)) from None
    try:
        if "canvas" in obj:
            v = obj["canvas"]
            h, w = check_size(tuple(v) if isinstance(v, list) else v, "canvas")
            if max(h, w) > MAX_CANVAS:
                raise ValueError(f"canvas: {v!r} is larger than {MAX_CANVAS} pixels per side")
            out["canvas"] = (h, w)
        if "seed" in obj:
            out["seed"] = checks.integer(obj["seed"], "seed", 0, 2**63)
        if "batch_size" in obj:
            out["batch_size"] = checks.integer(obj["batch_size"], "batch_size", 1)
        if "description" in obj and not isinstance(obj["description"], str):
            raise ValueError(f"description must be a string, got {checks.shown(obj['description'])}")
    except ValueError as e:
        message = _first_line(e)
        name = _where(message, LAYOUT_FIELDS)
        if name and message[len(name):len(name) + 1] in (" ", ":"):
            message = message[len(name):].lstrip(" :")
        raise LayoutError(f"{name}: {message}" if name else message) from None
    if "description" in obj:
        out["description"] = obj["description"]
    return out


def _declared_types(**select) -> list:
    """The entry points of installed packages in the ``infd_solve.constraints`` group (``name=`` selects)."""
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP, **select))


def _load_declared_type(kind: str, at: str) -> None:
    """Import the constraint class an installed package declares for layout type ``kind``, if one does (its
    module registers it)."""
    from .constraints.base import REGISTRY

    declared = _declared_types(name=kind)
    if not declared:
        return
    entry = declared[0]
    try:
        entry.load()
    except Exception as e:  # noqa: BLE001 - a broken plugin is reported, in one line, with the item
        raise LayoutError(f"{at}.type: {kind!r} is declared by the entry point {entry.name} = {entry.value}, "
                          f"which cannot be imported: {type(e).__name__}: {_first_line(e)}") from None
    if kind not in REGISTRY:
        raise LayoutError(f"{at}.type: the entry point {entry.name} = {entry.value} was imported but defines no "
                          f"Constraint with layout_type = {kind!r}")


def _unknown_type(raw: dict, at: str) -> LayoutError:
    """The error for an item whose type is missing or names no constraint, built-in, imported or declared."""
    from .constraints.base import REGISTRY

    known = sorted(set(REGISTRY) | {entry.name for entry in _declared_types()})
    if "type" not in raw:
        return LayoutError(f"{at}: missing field 'type'; one of {', '.join(known)}")
    kind = raw["type"]
    close = difflib.get_close_matches(kind, known, n=1) if isinstance(kind, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return LayoutError(f"{at}.type: unknown type {checks.shown(kind)}{hint}; allowed: {', '.join(known)}; a type of "
                       f"your own must be imported first (infd-layout --import MODULE) or declared as an "
                       f"{ENTRY_POINT_GROUP!r} entry point")


def _build_item(raw, i: int, context: LayoutContext):
    from .constraints.base import REGISTRY

    at = f"items[{i}]"
    if not isinstance(raw, dict):
        raise LayoutError(f"{at}: an item is a JSON object like {{\"type\": \"clip\", \"prompt\": ..., \"box\": ...}}, "
                          f"got {checks.shown(raw)}")
    kind = raw.get("type")
    if isinstance(kind, str) and kind not in REGISTRY:
        _load_declared_type(kind, at)
    if not isinstance(kind, str) or kind not in REGISTRY:
        raise _unknown_type(raw, at)
    cls = REGISTRY[kind]
    fields = {k: v for k, v in raw.items() if k != "type"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            constraint = cls.from_layout(fields, context)
        except (ValueError, TypeError, FileNotFoundError, OverflowError) as e:
            message = _first_line(e)
            name = _where(message, list(cls.layout_fields()))
            if name and message[len(name):len(name) + 1] in (" ", ":"):  # "weight must be ..." -> "must be ..."
                message = message[len(name):].lstrip(" :")
            raise LayoutError(f"{at}.{name}: {message}" if name else f"{at} ({kind}): {message}") from None
    for w in caught:  # conversions and repairs are reported with the item they concern
        warnings.warn(f"{at} ({kind}): {w.message}", w.category, stacklevel=3)
    return constraint


def parse_layout(obj_or_path, clip=None, base_dir: str | Path | None = None, device=None):
    """``(LayoutSettings, [Constraint, ...])`` from a layout dict or a JSON file path.

    ``clip``: a :class:`infd_solve.clip.ClipModel`, a path / name for :func:`infd_solve.load_clip`, or
    ``None`` for the default domain CLIP; loaded only if an item needs one. ``base_dir``: where relative
    file paths start (default: the layout file's directory, or the working directory for a dict).
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
    values = _settings(obj, source)
    if "items" not in obj:
        raise LayoutError("items: missing; a layout needs a list of items (constraints)")
    raw_items = obj["items"]
    if not isinstance(raw_items, list) or not raw_items:
        raise LayoutError(f"items: must be a non-empty list of item objects, got {checks.shown(raw_items)}")
    if len(raw_items) > MAX_ITEMS:  # every item renders and backpropagates at every step
        raise LayoutError(f"items: {len(raw_items)} items, more than the {MAX_ITEMS} a layout may have")
    base = Path(base_dir) if base_dir is not None else (source.parent if source else Path.cwd())
    context = LayoutContext(values.get("canvas", LayoutSettings.canvas), base, clip, device)

    built = [_build_item(raw, i, context) for i, raw in enumerate(raw_items)]
    named: dict[str, int] = {}  # names are keys of histories and reports: explicit ones first, then defaults
    for i, (raw, c) in enumerate(zip(raw_items, built)):
        if "name" in raw:
            if c.name in named:
                raise LayoutError(f"items[{i}].name: {c.name!r} is already used by items[{named[c.name]}]")
            named[c.name] = i
    for i, (raw, c) in enumerate(zip(raw_items, built)):
        if "name" not in raw:
            if c.name in named:
                c.name = f"{c.name} #{i}"
            named[c.name] = i
    return LayoutSettings(**values), [c.to(device) for c in built]


def solve_layout(layout, out: str | Path | None = None, model="default", clip="default", device=None,
                 progress: bool = True):
    """Solve a layout (a JSON file or a dict) with its own settings: canvas, seed, steps, solver options.

        result = solve_layout("recipes/examples/quick_512.json", "outputs/quick.png")

    ``out``: also write the image there at the layout's canvas size (a batch: ``out_0.png``, ``out_1.png``,
    ...; see :meth:`~infd_solve.Result.save`), a path checked before any work. ``model``: a loaded
    :class:`~infd_solve.INFDModel`, or what :func:`~infd_solve.load_model` takes (loaded on ``device``, default
    the CPU); ``clip``: as for :func:`parse_layout`. Item types of your own must be imported, or declared as
    entry points (see above). Returns the :class:`~infd_solve.Result`.
    """
    from .io import check_output
    from .models import INFDModel, load_model
    from .solver import Solver

    out = check_output(out) if out is not None else None
    if not isinstance(model, INFDModel):
        model = load_model(model, device=device).eval()
    settings, constraints = parse_layout(layout, clip=clip, device=model.device)
    solver = Solver(model, **settings.solver_kwargs(), progress=progress)
    result = solver.solve(constraints, batch_size=settings.batch_size, seed=settings.seed)
    if out is not None:
        result.save(out, settings.canvas)
    return result
