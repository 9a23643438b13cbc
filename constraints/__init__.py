"""Built-in guidance constraints, installed as ``infd_solve.constraints``.

Each is one small :class:`infd_solve.Constraint` subclass in its own file; a new one needs no edit elsewhere.
"""

from .clip_box import ClipBox
from .color_match import ColorMatch
from .lowres_observation import LowResObservation
from .masked_observation import MaskedObservation
from .perceptual_match import PerceptualMatch

__all__ = ["ClipBox", "ColorMatch", "LowResObservation", "MaskedObservation", "PerceptualMatch"]
