"""Forward operators of observations (DeepInverse's ``Physics``): what a camera records of a box of the canvas.

One file per operator, each a small :class:`Operator` subclass; an observation constraint
(:class:`infd_solve.constraints.Observation`) pairs one with an image and a
:class:`~infd_solve.fidelity.GaussianFidelity`.
"""

from .base import Operator, coarsen_observation, resample
from .blur import Blur, blur, blur_transpose, gaussian_kernel, load_kernel, motion_kernel
from .downsample import Downsample
from .mask import Mask

__all__ = ["Operator", "Mask", "Downsample", "Blur", "resample", "coarsen_observation", "blur", "blur_transpose",
           "gaussian_kernel", "motion_kernel", "load_kernel"]
