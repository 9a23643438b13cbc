"""Super-resolution at any (non-integer) factor: the field must explain a low-resolution observation."""

from __future__ import annotations

from .. import checks
from ..io import load_image
from ..operators import Downsample
from .base import files_of, working_grid
from .observation import Observation

OPERATORS = ("render", "area", "bicubic")
MAX_FACTOR = 4  # the default supersampling of "area" / "bicubic" when the grid allows it


class LowResObservation(Observation):
    """``image`` is ``box`` of the canvas seen at low resolution.

    ``operator="area"`` (default) / ``"bicubic"``: the box rendered at ``factor`` x the observation's size,
    then area-averaged / bicubic-downsampled (:class:`~infd_solve.operators.Downsample`). ``"render"``: the
    field rendered directly on the observation's grid (the neural-field way: the renderer knows the pixel size;
    cheaper per step). ``factor=None`` supersamples as much as fits ``max_side`` (at most 4x); an observation
    larger than ``max_side`` is itself resampled down onto a grid that fits for guidance (its noise averaged
    down with it), so a guidance step costs the same however large the observation is. ``noise_sigma``: the
    observation noise (in [-1, 1] units). After solving, the result seen through the operator reproduces the
    image (:mod:`infd_solve.consistency`).
    """

    layout_type = "lowres"
    layout_paths = ("image",)
    layout_hidden = ("guide",)  # ``operator`` is this class's own field: the operator's name
    kind = "low-res"
    classical_answer = "bicubic-like interpolation made consistent with the input"
    unknown_part = "detail finer than the input"

    def __init__(self, image, box=None, noise_sigma: float = 0.0, operator: str = "area",
                 factor: int | None = None, max_side: int = 256, **kwargs):
        checks.choice(operator, "operator", OPERATORS)
        if factor is not None:
            factor = checks.integer(factor, "factor", 1, 16)
        y = load_image(image, "image")
        observed = tuple(y.shape[-2:])
        grid = working_grid(observed, max_side)
        if operator == "render":
            factor = 1
        elif factor is None:
            factor = max(1, min(MAX_FACTOR, max_side // max(grid)))
        mode = "bicubic" if operator == "bicubic" else "area"
        # the full operator: the image's grid at `factor` x (when guidance fits it), else the image's grid alone
        full_factor = factor if grid == observed else 1
        camera = Downsample((observed[0] * full_factor, observed[1] * full_factor), observed, mode)
        guide = Downsample((grid[0] * factor, grid[1] * factor), grid, mode)
        super().__init__(y, camera, box=box, noise_sigma=noise_sigma, max_side=max_side, guide=guide, **kwargs)
        self._image_files = self.input_files = files_of(image)
        self.mode, self.factor = operator, factor
