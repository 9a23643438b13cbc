"""LPIPS between a region and a reference image (needs LPIPS backbone weights on disk; nothing downloads)."""

from __future__ import annotations

from ..constraint import Constraint, check_aspect, load_image
from ..losses import load_lpips


class PerceptualMatch(Constraint):
    """LPIPS distance between ``box`` rendered at the reference's size and ``reference``.

    Raises ``FileNotFoundError`` naming the missing backbone file (see :mod:`infd_solve.losses`), or pass an
    already-built ``metric`` (any module mapping two image batches in [-1, 1] to distances).
    """

    def __init__(self, reference, box=(0.0, 0.0, 1.0, 1.0), net: str = "vgg", metric=None, **kwargs):
        y = load_image(reference, "PerceptualMatch reference")
        super().__init__(box=box, size=tuple(y.shape[-2:]), **{"name": "perceptual"} | kwargs)
        check_aspect(y, self.box, "PerceptualMatch reference")
        self.reference = y
        self.metric = metric if metric is not None else load_lpips(net)

    def loss(self, patch):
        return self.metric(patch, self.reference.expand_as(patch)).flatten()
