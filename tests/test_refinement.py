"""Refinement fits the observations without undoing the other constraints (the README's example mixes CLIP
boxes with a known patch): every constraint it does not fit ends at least as good as it was sampled."""

import pytest
import torch

import infd_solve
from infd_solve import Result
from infd_solve.constraints import ClipBox, MaskedObservation


def _losses(model, latent, constraints):
    with torch.no_grad():
        field = model.decode(latent)
    report = Result(model, latent, field, constraints).report()
    return {name: torch.tensor(values["loss"]) for name, values in report.items()}


@pytest.mark.parametrize("hold", [10.0, 0.0])
def test_refinement_holds_the_clip_boxes(gaussian_model, tiny_clip, hold):
    patch = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # unlike anything sampled
    constraints = [ClipBox("clouds", (0.0, 0.0, 1.0, 0.4), clip=tiny_clip, cutouts=0),
                   ClipBox("a forest", (0.0, 0.5, 0.5, 1.0), clip=tiny_clip, cutouts=0),
                   MaskedObservation(patch, box=(0.4, 0.4, 0.6, 0.6))]
    result = infd_solve.Solver(gaussian_model, steps=5, refine_steps=30, refine_lr=0.3, refine_hold=hold,
                               progress=False).solve(constraints, batch_size=2, seed=0)
    before = _losses(gaussian_model, result.sampled_latent, result.constraints)
    after = _losses(gaussian_model, result.latent, result.constraints)
    assert (after["observation"] < before["observation"]).all()  # the refinement did fit the patch
    worse = max(float((after[n] - before[n]).max()) for n in ("clip:clouds", "clip:a forest"))
    if hold:
        assert worse <= 1e-3
    else:  # without holding them, fitting the patch drags the boxes away: the failure this guards against
        assert worse > 1e-3
    assert result.history["phase"].count("refine") == 30
