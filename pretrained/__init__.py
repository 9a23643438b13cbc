"""Weights shipped with infd-solve (installed as ``infd_solve.pretrained``); everything loads offline."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
NAMES = ("default",)


def model_dir(name: str = "default") -> Path:
    """Directory of a shipped INFD model (``config.json`` + ``model.safetensors``)."""
    if name not in NAMES:
        raise ValueError(f"unknown pretrained model {name!r}; shipped: {NAMES}")
    path = ROOT / name / "infd"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped model {name!r} is missing: expected {path}/config.json and model.safetensors. "
            "Reinstall infd-solve, or train it with the recipes (see pretrained/MODEL_CARD.md)."
        )
    return path


def clip_dir(name: str = "default") -> Path:
    """Directory of a shipped CLIP model (open_clip ``local-dir:`` format: ``open_clip_config.json`` + weights)."""
    if name not in NAMES:
        raise ValueError(f"unknown pretrained CLIP {name!r}; shipped: {NAMES}")
    path = ROOT / name / "clip"
    if not (path / "open_clip_config.json").is_file():
        raise FileNotFoundError(
            f"the shipped CLIP {name!r} is missing: expected {path}/open_clip_config.json and "
            "open_clip_model.safetensors. Reinstall infd-solve, or train it with recipes/train_clip.py."
        )
    return path
