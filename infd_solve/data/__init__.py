"""Procedural continuous-image datasets (numpy only)."""
from .landscapes import (LABELS, TEST_SEED_OFFSET, LandscapeDataset, Scene, caption, label_captions,
                         render, sample_scene)
