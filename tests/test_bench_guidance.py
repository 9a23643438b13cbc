"""The region-local decoding experiment of recipes/bench_guidance.py, on a small random model."""

import torch

from .helpers import load_recipe


def test_region_local_decoding_is_exact_with_a_full_halo_and_the_same_statistics(local_model):
    RegionLocalDecoding = load_recipe("bench_guidance").RegionLocalDecoding
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    box, size = (0.3, 0.55, 0.7, 0.95), (20, 16)
    with torch.no_grad():
        exact = local_model.render(local_model.decode(z), size, box)
        errors = {}
        for halo in (0, 8):
            local = RegionLocalDecoding(local_model, halo=halo)
            local.record(z)
            errors[halo] = (local.render(z, box, size) - exact).abs().max().item()
        local.record(z + 0.5 * torch.randn_like(z))  # stale statistics: a real error
        stale = (local.render(z, box, size) - exact).abs().max().item()
    assert errors[8] < 1e-5  # the whole latent is the window: only the GroupNorm path differs, and it matches
    assert errors[0] > 1e-3 and stale > 1e-3
    assert all("forward" not in vars(n) for n in local.norms)  # the frozen norms are undone
