"""The constraint interface: a region of the canvas, a render grid, and a loss on what is rendered there.

A new guidance loss is one small subclass in one file::

    class Brightness(Constraint):
        layout_type = "brightness"               # optional: usable in JSON layouts as {"type": "brightness", ...}

        def __init__(self, target, box=None, **kwargs):
            super().__init__(box=box, size=(32, 32), **kwargs)
            self.target = target

        def loss(self, patch):                    # patch: B x 3 x 32 x 32 in [-1, 1], rendered over box
            return (patch.mean((1, 2, 3)) - self.target) ** 2

The solver renders ``box`` at ``size`` from the predicted field at every step, calls ``loss`` (one value per
sample, >= 0; DPS-style normalization takes its square root) and backpropagates through renderer and decoder.
A class with a ``layout_type`` is registered when it is defined: a layout item of that type is built by
:meth:`Constraint.from_layout`, whose fields are the constructor's arguments, so a new constraint needs no
edit anywhere else to work in layouts, overlays and reports.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from .. import checks
from ..rendering import FULL_CANVAS, Box, check_box, check_size

REGISTRY: dict[str, type["Constraint"]] = {}  # layout "type" -> constraint class
BASE_LAYOUT_FIELDS = ("box", "weight", "active", "name", "refine")  # what every layout item may set
CONTEXT_ARGUMENTS = ("clip", "canvas")  # constructor arguments a layout supplies, not its items' fields
MAX_WEIGHT = 1e6
MAX_GRID_PIXELS = 4096 * 4096  # one constraint's render grid, with gradients, must fit in memory


class Constraint:
    """Base class of guidance terms.

    ``box``: the region's bounding box in canvas fractions ``(left, top, right, bottom)`` (default: the whole
    canvas); ``polygon``: for constraints that accept one, a region given as ``(x, y)`` vertices or a shapely
    polygon in canvas fractions instead (``box`` is then its bounds and ``geometry`` the polygon's part inside
    the canvas); ``size``: the ``(height, width)`` of the grid this constraint renders; ``weight``: its step
    size (default: the class's ``default_weight``, chosen for the solver's default ``scale`` of 1);
    ``active``: optional ``(t_min, t_max)`` window of diffusion timesteps (0..999) in which it guides;
    ``refine``: whether the solver's data-consistency refinement fits it after sampling (default: the class's
    ``refine``: True for observations, False for terms that fitting harder would game, like CLIP); ``name``:
    its label in histories, plots and reports.
    """

    layout_type: ClassVar[str | None] = None
    # layout fields that hold file paths, resolved relative to the layout file
    layout_paths: ClassVar[tuple[str, ...]] = ()
    # constructor arguments that are not layout fields (objects a subclass builds from its own fields)
    layout_hidden: ClassVar[tuple[str, ...]] = ()
    default_weight: ClassVar[float] = 1.0
    # the sampler family of a solve that names none ("auto") when every constraint of the solve prefers it
    default_sampler: ClassVar[str] = "dps"
    refine: bool = False
    batch: int = 1  # how many samples the constraint's data covers (observations of several images: one each)
    input_files: tuple[Path, ...] = ()  # files the constraint read (outputs must never overwrite them)
    overlay_linestyle: ClassVar[str] = "-"  # how layout overlays draw the region (observations: dashed)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("layout_type")
        if kind is None:
            return
        if not isinstance(kind, str) or not kind.strip():
            raise TypeError(f"{cls.__name__}.layout_type must be a non-empty string, got {kind!r}")
        previous = REGISTRY.get(kind)
        if previous is not None and (previous.__module__, previous.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"layout type {kind!r} of {cls.__module__}.{cls.__qualname__} is already taken by "
                            f"{previous.__module__}.{previous.__qualname__}")
        REGISTRY[kind] = cls

    def __init__(self, box: Sequence[float] | None = None, size=(64, 64), weight: float | None = None,
                 active: Sequence[int] | None = None, name: str | None = None, refine: bool | None = None,
                 polygon=None):
        from ..regions import as_geometry, bounding_box

        if polygon is not None:
            if box is not None:
                raise ValueError("give either box or polygon, not both")
            self.geometry = as_geometry(polygon, "polygon")
            self.box: Box = bounding_box(self.geometry)
        else:
            self.geometry = None
            self.box = FULL_CANVAS if box is None else check_box(box)
        self.size: tuple[int, int] = check_size(size, "size", MAX_GRID_PIXELS)
        # bounded: a huge weight overflows the step, and the sample is lost rather than guided
        self.weight = checks.number(self.default_weight if weight is None else weight, "weight", 0.0, MAX_WEIGHT)
        if active is not None:
            values = list(active) if isinstance(active, (list, tuple)) else None
            if (values is None or len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in values)
                    or not 0 <= values[0] <= values[1]):
                raise ValueError(f"active must be (t_min, t_max), integer timesteps with 0 <= t_min <= t_max, "
                                 f"got {active!r}")
            active = (values[0], values[1])
        self.active = active
        if refine is not None:
            if not isinstance(refine, bool):
                raise ValueError(f"refine must be true or false, got {refine!r}")
            self.refine = refine
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name or type(self).__name__
        self.score_size = self.size  # the grid :meth:`score` measures on (observations: their own image's)

    # -------------------------------------------------------------------------------------------- guidance
    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (``B``) of ``patch`` (``B x 3 x H x W`` in [-1, 1], rendered at ``size`` over ``box``)."""
        raise NotImplementedError

    def is_active(self, t: int) -> bool:
        return self.active is None or self.active[0] <= t <= self.active[1]

    def begin_step(self, step: int, t: int, keys: Sequence[int]) -> None:
        """Called by the solver before each :meth:`loss` with the step index, its timestep and one integer key
        per sample (its seed). A constraint whose loss is random (augmented views) draws from these alone, never
        from the global RNG, so a solve is reproducible and a sample does not depend on its batch."""

    def latent_region(self, shape: tuple[int, int]) -> torch.Tensor | None:
        """The cells of an ``h x w`` latent that this constraint's guidance may change (``h x w`` weights in
        [0, 1]), or ``None``: all of them (the default). The solver confines each step's guidance gradient to
        the union of the active constraints' regions, so a box can leave the rest of the canvas alone."""
        return None

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

    # -------------------------------------------------------------------------------------------- results
    def score(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample measures of a final ``patch`` rendered at ``score_size`` over ``box``: ``loss``, plus
        what a subclass adds (e.g. PSNR against an observation, CLIP similarity). Used by
        :meth:`infd_solve.Result.report`."""
        with torch.no_grad():
            return {"loss": self.loss(patch)}

    @property
    def label(self) -> str:
        """A short human label for overlays (default: the name)."""
        return self.name

    # -------------------------------------------------------------------------------------------- layouts
    @classmethod
    def layout_fields(cls) -> dict[str, inspect.Parameter]:
        """The fields a layout item of this type may have: the constructor's arguments (those of the base
        class too when it forwards ``**kwargs``), except what the layout itself supplies (``clip``,
        ``canvas``)."""
        fields: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if "__init__" not in klass.__dict__:
                continue
            params = list(inspect.signature(klass.__dict__["__init__"]).parameters.values())[1:]
            for p in params:
                if klass is Constraint and p.name not in BASE_LAYOUT_FIELDS:
                    continue  # a grid size or a polygon is a field only where a subclass offers it
                if p.name in cls.layout_hidden:
                    continue
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in CONTEXT_ARGUMENTS:
                    fields.setdefault(p.name, p)
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
        return fields

    @classmethod
    def from_layout(cls, fields: dict[str, Any], context) -> "Constraint":
        """Build from a layout item's fields (without ``type``) and the layout's ``context`` (its ``canvas``,
        ``clip`` and ``resolve_path(field, value)``; :class:`infd_solve.layout.LayoutContext`). Unknown fields,
        missing required ones and paths that do not exist raise ``ValueError`` starting with the field's name;
        the constructor checks the values. Override for items that need more than a call of the constructor."""
        from ..checks import unknown_field

        allowed = cls.layout_fields()
        for key in fields:
            if key not in allowed:
                raise unknown_field(key, allowed)
        missing = [n for n, p in allowed.items() if p.default is p.empty and n not in fields]
        if missing:
            raise ValueError(f"{missing[0]}: missing; a {cls.layout_type!r} item needs {', '.join(map(repr, missing))}")
        kwargs = {k: context.resolve_path(k, v) if k in cls.layout_paths and isinstance(v, str) else v
                  for k, v in fields.items()}
        accepted = inspect.signature(cls).parameters
        for name in CONTEXT_ARGUMENTS:
            if name in accepted:
                kwargs[name] = getattr(context, name)
        return cls(**kwargs)

    def __repr__(self) -> str:
        return f"{self.name}(box={tuple(round(v, 4) for v in self.box)}, size={self.size}, weight={self.weight})"


# ------------------------------------------------------------------------------------ shared by observations
def working_grid(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down (aspect kept) so that neither side exceeds ``max_side``; unchanged if it fits."""
    max_side = checks.integer(max_side, "max_side", 1, 4096)
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


def files_of(*inputs) -> tuple[Path, ...]:
    """The inputs that are file paths (what a constraint read, so that outputs never overwrite them)."""
    return tuple(Path(v).resolve() for v in inputs if isinstance(v, (str, Path)))


def file_label(kind: str, files: tuple[Path, ...]) -> str:
    """``"kind: file name"`` when the constraint's image came from a file, else ``kind``."""
    return f"{kind}: {files[0].name}" if files else kind
