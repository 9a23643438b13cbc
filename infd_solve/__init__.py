"""infd-solve: zero-shot inverse problems and layout-to-image with Image Neural Field Diffusion models."""

from .models import CheckpointError, INFDConfig, INFDModel, UnsafeCheckpointError, load_model

__version__ = "0.1.0"
__all__ = ["INFDModel", "INFDConfig", "load_model", "CheckpointError", "UnsafeCheckpointError"]
