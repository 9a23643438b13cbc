"""The sampler families on a problem with a known answer.

Prior N(0, I), the exact denoiser of that prior (eps = sqrt(1 - alpha_bar) x_t), and half of the coordinates
observed with noise 0.05. Unobserved coordinates must keep the prior's distribution; observed ones must land
on the observation. Every registered family, at 25 and at 200 steps where it takes them.
"""

import pytest
import torch
from diffusers import DDPMScheduler

from infd_solve.samplers import Problem, get_sampler, refine_latent
from infd_solve.samplers.ddim import ddim_timesteps

ACP = DDPMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="linear").alphas_cumprod
BATCH = 200


def exact_denoiser(x, t):
    return (1 - ACP[t].view(-1, 1, 1, 1)).sqrt() * x


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(1, 3, 4, 4, generator=g)
    mask = (torch.rand(1, 3, 4, 4, generator=g) < 0.5).float()
    y = truth + 0.05 * torch.randn(1, 3, 4, 4, generator=g)
    return y, mask


def residual_objective(problem):
    y, mask = problem

    def objective(x0, i, t, normalize):  # DPS's ||y - A(x0)|| (normalized) or its square, per sample
        squared = (mask * (y - x0)).square().flatten(1).sum(1)
        return (squared.sqrt() if normalize else squared), {}

    return objective


def run(problem, steps, family="dps", batch=BATCH, objective=None, callback=None, x=None, first_seed=100, **options):
    x = torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(1)) if x is None else x
    gens = [torch.Generator().manual_seed(first_seed + i) for i in range(len(x))]
    search = Problem(exact_denoiser, ACP, ddim_timesteps(steps), objective or residual_objective(problem), gens)
    return get_sampler(family).function(search, x, **options, callback=callback, progress=False)


# each family's options for this problem, the mean error on observed coordinates it must reach at 25 and 200
# steps, and the least standard deviation it must keep on the free ones (measured: DAPS and ReSample draw the
# free coordinates with about 0.76-0.80 of the prior's, DPS and MPGD 0.86-0.96)
FAMILIES = {"dps": ({"guidance_scale": 0.1}, 0.2, 0.05, 0.8), "mpgd": ({"guidance_scale": 0.1}, 0.2, 0.05, 0.8),
            "daps": ({"guidance_scale": 1e-3, "langevin_steps": 20}, 0.1, 0.05, 0.7),
            "resample": ({"guidance_scale": 4.0}, 0.2, 0.1, 0.7)}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("steps", [25, 200])
def test_observed_coordinates_reach_the_observation(problem, family, steps):
    y, mask = problem
    options, coarse, fine, least_std = FAMILIES[family]
    tolerance = coarse if steps == 25 else fine
    out = run(problem, steps, family, **options)
    error = ((out - y).abs() * mask).sum() / (mask.sum() * BATCH)
    assert error < tolerance
    unguided_error = ((torch.randn(BATCH, 3, 4, 4) - y).abs() * mask).sum() / (mask.sum() * BATCH)
    assert unguided_error > 0.8  # the guidance, not luck, brings the error down
    free = out[:, ~mask[0].bool()]
    assert abs(free.mean()) < 0.1
    assert least_std < free.std() < 1.1  # prior kept (coarse DDIM loses a little variance)


def test_sample_does_not_depend_on_its_batch(problem):
    for family, (options, *_) in FAMILIES.items():
        both = run(problem, 25, family, batch=3, **options)
        x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        alone = run(problem, 25, family, x=x[2:], first_seed=102, **options)
        torch.testing.assert_close(alone[0], both[2], rtol=1e-5, atol=1e-5)


def test_non_finite_loss_is_skipped_and_reported(problem):
    y, mask = problem
    skipped = []

    def objective(x0, i, t, normalize):
        loss = (mask * (y - x0)).flatten(1).norm(dim=1)
        if i == 3:  # sample 0 blows up at one step
            loss = loss * torch.tensor([float("nan"), 1.0])
        return loss, {}

    out = run(problem, 10, "dps", batch=2, objective=objective, guidance_scale=0.05,
              callback=lambda s: skipped.append(s["skipped"].tolist()))
    assert torch.isfinite(out).all()
    assert skipped[3] == [True, False] and all(s == [False, False] for k, s in enumerate(skipped) if k != 3)


def test_gradient_clipping_bounds_each_sample(problem):
    norms = []
    run(problem, 10, "dps", batch=4, guidance_scale=1.0, max_grad_norm=1e-3,
        callback=lambda s: norms.append(s["grad_norm"]))
    assert max(float(n.max()) for n in norms) <= 1e-3 + 1e-9


def test_refinement_anchor_keeps_barely_seen_cells_in_place():
    # Adam steps every cell by about lr however small its gradient: cells an observation barely sees
    # (gradient 1e-6 here) drift as far as the ones it sees, unless anchored to the sample
    x0 = torch.zeros(1, 2, 4, 4)
    weights = torch.ones_like(x0)
    weights[:, 1] = 1e-6

    def objective(z, i, t, normalize):
        return (weights * (z - 1.0).square()).flatten(1).sum(1), {}

    free = refine_latent(x0, objective, 100, progress=False)
    anchored = refine_latent(x0, objective, 100, progress=False, anchor=0.03)
    assert free[:, 1].abs().min() > 1.0  # drifted towards the barely seen target, like the seen cells
    assert anchored[:, 1].abs().max() < 0.1  # held near the sample
    assert (anchored[:, 0] - 1.0).abs().max() < 0.1  # the seen cells still fit
