"""infd-solve: zero-shot inverse problems and layout-to-image with Image Neural Field Diffusion models.

The public API is listed in ``__all__``. Names are imported on first use, so ``import infd_solve`` (and
tools that only look at the package, such as ``infd_solve.pretrained``) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_API = {
    "INFDModel": "models",
    "INFDConfig": "models",
    "load_model": "models",
    "CheckpointError": "models",
    "UnsafeCheckpointError": "models",
    "Solver": "solver",
    "Result": "solver",
    "Constraint": "constraints",
    "load_clip": "clip",
    "solve_layout": "layout",
}
__all__ = list(_API)

if TYPE_CHECKING:
    from .clip import load_clip  # noqa: F401
    from .constraints import Constraint  # noqa: F401
    from .layout import solve_layout  # noqa: F401
    from .models import CheckpointError, INFDConfig, INFDModel, UnsafeCheckpointError, load_model  # noqa: F401
    from .solver import Result, Solver  # noqa: F401


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'infd_solve' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
