"""Weights shipped with infd-solve (installed as ``infd_solve.pretrained``); everything loads offline."""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import MissingCheckpointError

ROOT = Path(__file__).resolve().parent
NAMES = ("default",)


def _shipped(name: str, kind: str, folder: str, files: tuple[str, str], remedy: str) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown pretrained {kind} {name!r}; shipped: {NAMES}")
    path = ROOT / name / folder
    if not (path / files[0]).is_file():
        raise MissingCheckpointError(f"the shipped {kind} {name!r} is missing: expected {path}/{files[0]} and "
                                     f"{files[1]}. Reinstall infd-solve, or {remedy}.")
    return path


def model_dir(name: str = "default") -> Path:
    """Directory of a shipped INFD model (``config.json`` + ``model.safetensors``)."""
    return _shipped(name, "model", "infd", ("config.json", "model.safetensors"),
                    "train it with the recipes (see pretrained/MODEL_CARD.md)")


def clip_dir(name: str = "default") -> Path:
    """Directory of a shipped CLIP model (open_clip ``local-dir:`` format: ``open_clip_config.json`` + weights)."""
    return _shipped(name, "CLIP", "clip", ("open_clip_config.json", "open_clip_model.safetensors"),
                    "train it with recipes/train_clip.py")
