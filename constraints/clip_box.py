"""Text guidance in a box: the box rendered at CLIP's input size should match a prompt."""

from __future__ import annotations

from typing import Sequence

import torch

from ..constraint import Constraint
from ..regions import region_box_and_mask


class ClipBox(Constraint):
    """Minimize ``1 - cos(image, prompt)`` (+ ``negative_weight`` times the mean cosine to negative prompts).

    ``clip``: what :func:`infd_solve.load_clip` returns (the default domain CLIP, or any open_clip model from a
    local file); ``None`` loads the default. ``region``: a box or a polygon (its bounding box is rendered).
    """

    def __init__(self, prompt: str, region=(0.0, 0.0, 1.0, 1.0), clip=None, negative_prompts: Sequence[str] = (),
                 negative_weight: float = 0.5, **kwargs):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if clip is None or isinstance(clip, str):
            from ..clip import load_clip

            clip = load_clip(clip or "default")
        box, _ = region_box_and_mask(region, name="ClipBox region")
        super().__init__(box=box, size=(clip.size, clip.size), **{"name": f"clip:{prompt}"} | kwargs)
        self.prompt, self.clip, self.negative_weight = prompt, clip, float(negative_weight)
        with torch.no_grad():
            self.text = clip.encode_text([prompt])
            negatives = [p for p in negative_prompts if p.strip()]
            self.negatives = clip.encode_text(negatives) if negatives else None

    def similarity(self, patch: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each rendered patch to the prompt."""
        return (self.clip.encode_image(patch) @ self.text.T.to(patch.device))[:, 0]

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        features = self.clip.encode_image(patch)
        loss = 1 - (features @ self.text.T.to(features.device))[:, 0]
        if self.negatives is not None:
            loss = loss + self.negative_weight * (features @ self.negatives.T.to(features.device)).mean(1).clamp_min(0)
        return loss
