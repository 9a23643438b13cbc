"""The layout judge, ClipBox's random views and its latent region, and the layout evaluation's measures."""

import json

import numpy as np
import pytest
import torch

import infd_solve
from infd_solve.constraints import ClipBox
from infd_solve.constraints.clip_box import MIN_COVERAGE
from infd_solve.data import LABELS, TEST_SEED_OFFSET, render_scene, sample_scene
from infd_solve.judge import Judge, JudgeConfig, JudgeNet, load_judge
from infd_solve.regions import rasterize
from infd_solve.solver import Solver

from .helpers import load_recipe, make_tiny_clip

PENTAGON = [(0.0, 0.55), (0.3, 0.5), (0.48, 0.62), (0.42, 0.74), (0.0, 0.76)]


# ------------------------------------------------------------------------------------------------ judge
def test_shipped_judge_loads_offline_and_beats_chance_on_held_out_crops(one_thread):
    judge = load_judge("default")
    assert judge.labels == LABELS
    rng = np.random.default_rng(7)
    images, truth = [], []
    for k in range(12):  # held-out scenes, random crops at the sizes the evaluation uses
        side = rng.uniform(0.4, 1.0)
        left, top = rng.uniform(0, 1 - side, 2)
        rgb, labels = render_scene(sample_scene(TEST_SEED_OFFSET + 500 + k), (left, top, left + side, top + side),
                                   (96, 96))
        images.append(torch.from_numpy(rgb).permute(2, 0, 1) * 2 - 1)
        truth.append(torch.from_numpy(labels.astype(np.int64)))
    predicted, truth = judge.segment(torch.stack(images)), torch.stack(truth)
    accuracy = (predicted == truth).double().mean().item()
    chance = max(np.bincount(truth.ravel().numpy()) / truth.numel())  # always answering the commonest label
    assert accuracy > 0.8 and accuracy > chance + 0.3


def test_missing_judge_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_judge.py"):
        load_judge(tmp_path)


def test_judge_fractions_count_the_asked_labels_inside_the_mask():
    judge = Judge(JudgeNet(JudgeConfig(labels=LABELS, channels=(4, 4), stem=4)), "test")
    labels = torch.full((1, 8, 8), LABELS.index("sky"))
    labels[:, 4:, :4] = LABELS.index("water")
    labels[:, 4:, 4:6] = LABELS.index("forest")
    lower_left = torch.zeros(8, 8)
    lower_left[4:, :4] = 1
    assert judge.fractions(labels, "water", lower_left).item() == 1.0
    assert judge.fractions(labels, ["water", "forest"]).item() == pytest.approx(24 / 64)
    assert judge.fractions(labels, "water", 1 - lower_left).item() == 0.0
    with pytest.raises(ValueError, match="unknown label"):
        judge.fractions(labels, "lava")


@pytest.mark.slow
def test_judge_recipe_writes_a_loadable_judge_and_resumes(tmp_path, one_thread):
    recipe = load_recipe("train_judge")
    common = ["--config", "tiny", "--pool-size", "8", "--sizes", "32", "64", "--eval-scenes", "3", "--model", "none",
              "--val-every", "2", "--out", str(tmp_path), "--threads", "1"]
    recipe.main(["--steps", "4", "--save-every", "2", "--keep-state", *common])
    first = json.loads((tmp_path / "train_log.json").read_text())
    assert {"config.json", "model.safetensors", "train_log.json", "loss_curve.png", "train_state.pt"} <= \
        {p.name for p in tmp_path.iterdir()}
    assert set(first["evaluation"]["sets"]) == {"clean 256", "autoencoder 256", "clean 64", "autoencoder 64"}
    judge = load_judge(tmp_path)
    assert judge.segment(torch.zeros(1, 3, 40, 24)).shape == (1, 40, 24)  # any size, padded inside
    log = recipe.main(["--steps", "4", "--resume", *common])  # from the kept state: nothing left to train
    assert log["steps"] == 4 and len(log["validation"]) == len(first["validation"])


# ------------------------------------------------------------------------------------------------ random views
def test_random_views_are_reproducible_per_seed_and_step_and_independent_of_the_batch(tiny_clip):
    c = ClipBox("clouds", (0.0, 0.0, 1.0, 0.4), clip=tiny_clip, cutouts=4)
    patch = torch.rand(3, 3, *c.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(123)  # the global RNG plays no part
    a = c.random_views(patch, [10, 11, 12], step=3)
    torch.manual_seed(456)
    torch.testing.assert_close(c.random_views(patch, [10, 11, 12], step=3), a, rtol=0, atol=0)
    assert a.shape == (12, 3, tiny_clip.size, tiny_clip.size)
    assert not torch.equal(c.random_views(patch, [10, 11, 12], step=4), a)  # another step, other views
    assert not torch.equal(c.random_views(patch, [20, 11, 12], step=3)[:4], a[:4])  # another seed
    alone = c.random_views(patch[1:2], [11], step=3)  # sample 1 alone gets its own views, as in the batch
    torch.testing.assert_close(alone, a[4:8], rtol=0, atol=0)


def test_solves_with_random_views_are_reproducible_and_a_sample_ignores_its_batch(gaussian_model, tmp_path, one_thread):
    import copy

    # float64 (model and CLIP), so that batched-vs-single rounding cannot hide views drawn per batch
    c = ClipBox("clouds", (0.0, 0.0, 0.5, 0.5), clip=make_tiny_clip(tmp_path), cutouts=3)
    solver = Solver(copy.deepcopy(gaussian_model).double(), steps=3, guidance_scale=5.0, progress=False)
    first = solver.solve([c], batch_size=2, seed=5)
    torch.manual_seed(1)
    again = solver.solve([c], batch_size=2, seed=5)
    torch.testing.assert_close(first.latent, again.latent, rtol=0, atol=0)
    second_alone = solver.solve([c], batch_size=1, seed=6)
    torch.testing.assert_close(second_alone.latent[0], first.latent[1], rtol=1e-7, atol=1e-7)


def test_polygon_views_stay_inside_the_polygon(tiny_clip):
    c = ClipBox("a forest", polygon=PENTAGON, clip=tiny_clip, cutouts=8)
    coverage = rasterize(c.geometry, c.box, c.size)[0, 0]
    side, top, left = torch.from_numpy(c.candidates).unbind(1)
    inside = [coverage[t:t + s, l:l + s].mean().item() for s, t, l in zip(side.tolist(), top.tolist(), left.tolist())]
    assert len(inside) > 10 and min(inside) >= MIN_COVERAGE - 1e-6
    box_item = ClipBox("a forest", c.box, clip=tiny_clip, cutouts=8)
    assert len(box_item.candidates) > len(c.candidates)  # a box may be viewed anywhere


def test_polygon_guidance_moves_only_pixels_inside_the_polygon(tiny_clip):
    c = ClipBox("a forest", polygon=PENTAGON, clip=tiny_clip, cutouts=4)
    c.begin_step(0, 500, [0])
    patch = (torch.rand(1, 3, *c.size, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_(True)
    c.loss(patch).sum().backward()
    coverage = rasterize(c.geometry, c.box, c.size)[0, 0]
    outside = patch.grad[0].abs().sum(0)[coverage == 0]
    assert outside.numel() > 0 and outside.max().item() == 0.0
    assert patch.grad[0].abs().sum(0)[coverage == 1].max().item() > 0


# ------------------------------------------------------------------------------------------------ locality
@pytest.mark.parametrize("box,margin,cells", [
    ((0.75, 0.0, 1.0, 0.25), 0, [(r, c) for r in range(2) for c in range(6, 8)]),  # 8x8 latent: 2x2 cells
    ((0.75, 0.0, 1.0, 0.25), 1, [(r, c) for r in range(3) for c in range(5, 8)]),
    ((0.3, 0.3, 0.45, 0.45), 0, [(r, c) for r in range(2, 4) for c in range(2, 4)]),  # any overlap counts
])
def test_latent_region_is_the_box_plus_margin(tiny_clip, box, margin, cells):
    region = ClipBox("clouds", box, clip=tiny_clip, margin=margin).latent_region((8, 8))
    assert sorted(map(tuple, region.nonzero().tolist())) == sorted(cells)
    assert ClipBox("clouds", box, clip=tiny_clip, margin=None).latent_region((8, 8)) is None


def test_a_box_guidance_leaves_the_latent_outside_its_window_alone(gaussian_model, tiny_clip, one_thread):
    # the exact Gaussian denoiser mixes no cells, so any change outside the window would be the guidance's
    box = (0.75, 0.0, 1.0, 0.25)
    confined = ClipBox("clouds", box, clip=tiny_clip, margin=1)
    free = ClipBox("clouds", box, clip=tiny_clip, margin=None)
    window = confined.latent_region((8, 8)).bool()
    plain = Solver(gaussian_model, steps=4, guidance_scale=0.0, progress=False).solve([confined], seed=2).latent
    guided = Solver(gaussian_model, steps=4, guidance_scale=20.0, progress=False)
    inside = guided.solve([confined], seed=2).latent
    everywhere = guided.solve([free], seed=2).latent
    assert (inside - plain)[..., ~window].abs().max().item() == 0.0
    assert (inside - plain)[..., window].abs().max().item() > 1e-3  # it did guide, inside
    assert (everywhere - plain)[..., ~window].abs().max().item() > 1e-3  # unconfined, it reaches everywhere


def test_keep_outside_leaves_the_rest_as_the_unguided_sample(tiny_clip, one_thread):
    # a real (random) UNet mixes cells: guidance confined to the window still reaches the rest through the
    # denoiser's context, unless the rest follows the unguided trajectory
    from .helpers import tiny_model

    model = tiny_model(normalize=False)
    h, w = model.config.z_shape[1:]
    box = ClipBox("clouds", (0.0, 0.0, 0.5, 0.5), clip=tiny_clip, margin=0, weight=50.0)
    window = box.latent_region((h, w)).bool()
    plain = Solver(model, steps=5, guidance_scale=0.0, progress=False).solve([box], seed=1).latent
    kept = Solver(model, steps=5, keep_outside=True, progress=False).solve([box], seed=1).latent
    mixed = Solver(model, steps=5, progress=False).solve([box], seed=1).latent
    assert (kept - plain)[..., ~window].abs().max().item() == 0.0
    assert (kept - plain)[..., window].abs().max().item() > 1e-3
    assert (mixed - plain)[..., ~window].abs().max().item() > 1e-4
    # a constraint without a region (a whole-canvas prompt) turns blending off: nothing is kept
    free = ClipBox("fog", clip=tiny_clip, margin=None)
    assert infd_solve.solver.kept_region([box, free], (h, w)) is None


def test_sampler_keep_mask_of_zeros_is_the_unguided_sample(gaussian_model):
    from infd_solve.samplers import Problem, dps

    x = torch.randn(2, *gaussian_model.config.z_shape, generator=torch.Generator().manual_seed(0))
    timesteps = [999, 666, 333, 0]

    def objective(z0, i, t, normalize):
        return ((z0 - 3.0) ** 2).flatten(1).sum(1), {}

    def run(scale, keep):
        problem = Problem(gaussian_model.denoise, gaussian_model.alphas_cumprod, timesteps, objective,
                          torch.Generator().manual_seed(1), keep=keep)
        return dps.dps(problem, x, guidance_scale=scale, progress=False)
    unguided = run(0.0, None)
    torch.testing.assert_close(run(1.0, torch.zeros(1)), unguided, rtol=0, atol=1e-6)
    assert (run(1.0, torch.ones(1)) - unguided).abs().max().item() > 1e-2


def test_regions_of_active_constraints_are_united(tiny_clip):
    from infd_solve.solver import guided_region

    early = ClipBox("clouds", (0.0, 0.0, 0.25, 0.25), clip=tiny_clip, margin=0, active=(500, 999))
    late = ClipBox("a lake", (0.75, 0.75, 1.0, 1.0), clip=tiny_clip, margin=0, active=(0, 700))
    region = guided_region([early, late], (8, 8))
    assert region(0, 900).sum().item() == 4 and region(0, 600).sum().item() == 8
    assert guided_region([early, ClipBox("fog", clip=tiny_clip, margin=None)], (8, 8))(0, 600) is None
    assert guided_region([ClipBox("fog", clip=tiny_clip, margin=None)], (8, 8)) is None


# ------------------------------------------------------------------------------------------------ evaluation
def test_layout_evaluation_measures_share_in_box_leakage_and_mirror(tiny_clip):
    from infd_solve.judge import judge_layout_items, target_labels

    judge = Judge(JudgeNet(JudgeConfig(labels=LABELS, channels=(4, 4), stem=4)), "test")
    lake = ClipBox("a lake", (0.0, 0.5, 0.5, 1.0), clip=tiny_clip)
    clouds = ClipBox("clouds", (0.75, 0.0, 1.0, 0.25), clip=tiny_clip)
    labels = torch.full((1, 16, 16), LABELS.index("sky"))
    labels[:, 8:, :8] = LABELS.index("water")  # the lake's box, all water
    labels[:, 12:, 8:] = LABELS.index("water")  # and water spilling into the lower right
    labels[:, :4, :4] = LABELS.index("cloud")  # clouds in the mirror of the clouds' box only
    rows = {r["prompt"]: r for r in judge_layout_items(judge, labels, [lake, clouds], (16, 16))}
    assert rows["a lake"]["in"] == [1.0]
    assert rows["a lake"]["outside"] == [pytest.approx(32 / 192)]
    assert rows["clouds"]["in"] == [0.0] and rows["clouds"]["mirror"] == [1.0]
    assert rows["a lake"]["mirror"] == [0.5]
    with pytest.raises(ValueError, match="no label mapping"):
        target_labels("a volcano")
