"""``load_model``: official checkpoints, our saved directories, and the shipped default, all offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .infd import CONFIG_FILE, FORMAT_NAME, WEIGHTS_FILE, INFDConfig, INFDModel
from ..checkpoints import CheckpointError, MissingCheckpointError, load_checked_state_dict
from .official import load_official

OFFICIAL_HINT = (
    "Official INFD checkpoints (e.g. the FFHQ model of yinboc/infd) are downloaded by you on a machine with "
    "internet access and passed here as a local .pth path; infd-solve never downloads anything."
)


def load_pretrained(directory: str | Path) -> INFDModel:
    """Load a directory written by :meth:`INFDModel.save` (``config.json`` + ``model.safetensors``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise MissingCheckpointError(
                f"{path} not found: an infd-solve model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{config_path} is not an infd-solve model config (no \"format\": \"{FORMAT_NAME}\")")
    try:
        config = INFDConfig.from_dict(raw)
        model = INFDModel(config)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - wrong types anywhere in the JSON surface as all sorts of errors
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{config_path}: invalid model config ({type(e).__name__}: {first[:300]})") from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{weights_path} is not a readable safetensors file (corrupt or truncated?): {e}") from None
    load_checked_state_dict(model, state, weights_path)
    return model.eval()


def load_model(path_or_name: str | Path, ema: bool = True, device: str | torch.device | None = None) -> INFDModel:
    """Load an INFD model offline.

    ``path_or_name``: ``"default"`` (the model shipped in ``infd_solve.pretrained``), a directory saved by
    :meth:`INFDModel.save`, or an official INFD checkpoint file (``.pth``; EMA denoiser unless ``ema=False``).
    """
    from .. import pretrained

    if not isinstance(path_or_name, (str, Path)):
        raise ValueError(f"path_or_name must be 'default', a directory or a checkpoint path, got "
                         f"{type(path_or_name).__name__}")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if isinstance(path_or_name, str) and path_or_name in pretrained.NAMES:
        path = pretrained.model_dir(path_or_name)
    else:
        path = Path(path_or_name)
    if not path.exists():
        raise MissingCheckpointError(f"no model at {path}. {OFFICIAL_HINT}")
    model = load_pretrained(path) if path.is_dir() else load_official(path, ema=ema)
    # a loaded model is for inference: its renders build no autograd graph unless their input asks for one (a
    # solve's latent does); training recipes build their own models from its weights
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model
