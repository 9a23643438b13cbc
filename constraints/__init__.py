"""Guidance constraints, installed as ``infd_solve.constraints``: the :class:`Constraint` base class and the
built-in ones, one small subclass per file. A new one needs no edit elsewhere (see ``base.py``).
"""

from .base import REGISTRY, Constraint
from .observation import Observation
from .blur_observation import BlurObservation
from .clip_box import ClipBox
from .color_match import ColorMatch
from .lowres_observation import LowResObservation
from .masked_observation import MaskedObservation
from .perceptual_match import PerceptualMatch

__all__ = ["Constraint", "REGISTRY", "Observation", "BlurObservation", "ClipBox", "ColorMatch", "LowResObservation",
           "MaskedObservation", "PerceptualMatch"]
