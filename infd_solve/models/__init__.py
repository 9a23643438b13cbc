"""The INFD model: autoencoder (diffusers blocks), CLIF renderer, latent denoiser, and checkpoint loading."""

from .infd import INFDConfig, INFDModel
from .loading import load_model
from ..checkpoints import CheckpointError, UnsafeCheckpointError

__all__ = ["INFDConfig", "INFDModel", "load_model", "CheckpointError", "UnsafeCheckpointError"]
