"""Procedural continuous-image datasets (numpy only; ``scene_tensor`` gives torch tensors)."""
from .landscapes import (LABELS, TEST_SEED_OFFSET, LandscapeDataset, Scene, caption, label_captions,
                         render_scene, sample_scene, scene_tensor)

__all__ = ["LABELS", "TEST_SEED_OFFSET", "LandscapeDataset", "Scene", "caption", "label_captions", "render_scene",
           "sample_scene", "scene_tensor"]
