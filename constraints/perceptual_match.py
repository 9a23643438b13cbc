"""LPIPS between a region and a reference image (needs LPIPS backbone weights on disk; nothing downloads)."""

from __future__ import annotations

from ..io import load_image
from ..losses import load_lpips
from .base import Constraint, check_aspect, file_label, files_of


class PerceptualMatch(Constraint):
    """LPIPS distance between ``box`` rendered at the reference's size and ``reference``.

    Raises ``FileNotFoundError`` naming the missing backbone file (see :mod:`infd_solve.losses`), or pass an
    already-built ``metric`` (any module mapping two image batches in [-1, 1] to distances).
    """

    layout_type = "perceptual"
    layout_paths = ("reference",)
    overlay_linestyle = "--"

    def __init__(self, reference, box=None, net: str = "vgg", metric=None, **kwargs):
        self.input_files = files_of(reference)
        y = load_image(reference, "reference")
        self.batch = y.shape[0]
        super().__init__(box=box, size=tuple(y.shape[-2:]), **{"name": "perceptual"} | kwargs)
        check_aspect(y, self.box, "reference")
        self.reference = y
        self.metric = metric if metric is not None else load_lpips(net)

    @property
    def label(self) -> str:
        return file_label("perceptual", self.input_files[:1])

    def loss(self, patch):
        return self.metric(patch, self.reference.expand_as(patch)).flatten()
