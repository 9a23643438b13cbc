"""Deblurring: the field, blurred by a known kernel, must explain a blurred (and noisy) observation.

The operator, its kernels and how a kernel is rebinned onto a coarser guidance grid:
:mod:`infd_solve.operators.blur`.
"""

from __future__ import annotations

from ..io import load_image
from ..operators import Blur
from ..operators.blur import (blur, blur_transpose, gaussian_kernel, load_kernel, motion_kernel,  # noqa: F401
                              resample_kernel)
from .base import files_of
from .observation import Observation


class BlurObservation(Observation):
    """``image`` is ``box`` of the canvas blurred by ``kernel`` (in the image's pixels), plus noise.

    ``kernel``: a 2-D array, a file (``.npy`` or a grayscale image) or a spec dict (``{"type": "gaussian",
    "size": 61, "sigma": 3.0}``, ``{"type": "motion", "size": 61, "length": 31, "angle": null, "seed": 0}``;
    see :func:`~infd_solve.operators.gaussian_kernel`, :func:`~infd_solve.operators.motion_kernel`),
    normalized to sum 1. The operator is :class:`~infd_solve.operators.Blur` (true convolution, mirrored
    borders). Guidance renders the box on a grid of at most ``max_side`` pixels per side, with the image
    resampled and the kernel rebinned onto it, so a step costs the same however large the photo.
    ``noise_sigma``: the observation noise (in [-1, 1] units). :meth:`score` measures the result on the
    image's own grid with the kernel as given (measurement consistency); after solving, the result blurred by
    the kernel reproduces the image within the noise (:mod:`infd_solve.consistency`).
    """

    layout_type = "blur"
    layout_paths = ("image", "kernel")
    kind = "blur"
    classical_answer = "a regularized deconvolution"
    default_sampler = "daps"  # better than DPS on this task at equal denoiser evaluations (model card)
    unknown_part = "detail the blur removed"

    def __init__(self, image, kernel, box=None, noise_sigma: float = 0.0, max_side: int = 256, **kwargs):
        y = load_image(image, "image")
        super().__init__(y, Blur(kernel, y.shape[-2:]), box=box, noise_sigma=noise_sigma, max_side=max_side,
                         **kwargs)
        self._image_files = files_of(image)
        self.input_files = self._image_files + files_of(kernel)

    @property
    def kernel(self):
        """The kernel as given, on the image's grid."""
        return self.operator.kernel

    @property
    def grid_kernel(self):
        """The kernel on the guidance grid."""
        return self.guide.kernel
