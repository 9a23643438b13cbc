"""Tests for the procedural landscape dataset (numpy only)."""

import time

import numpy as np
import pytest

from infd_solve.data import landscapes as L
from infd_solve.data.landscapes import (LABELS, TEST_SEED_OFFSET, LandscapeDataset, Scene, caption,
                                        label_captions, render_scene, sample_scene)

FULL = (0.0, 0.0, 1.0, 1.0)


def first_seed(pred, limit=300):
    for s in range(limit):
        sc = sample_scene(s)
        if pred(sc):
            return sc
    raise AssertionError("no seed satisfies the predicate")


def psnr(a, b):
    return float(-10.0 * np.log10(np.mean((a.astype(np.float64) - b) ** 2)))


def area_down(x, k):
    H, W, C = x.shape
    return x.reshape(H // k, k, W // k, k, C).mean(axis=(1, 3))


# Scenes covering every time of day, lakes (reflections), fog and the near forest.
DAY = first_seed(lambda s: s.time == "day" and s.lake is None and s.near_forest is not None)
SUNSET_LAKE = first_seed(lambda s: s.time == "sunset" and s.lake is not None)
NIGHT_LAKE = first_seed(lambda s: s.time == "night" and s.lake is not None)
CLEAR_NIGHT = first_seed(lambda s: s.time == "night" and s.cloud[0] <= 0.05)
FOGGY = first_seed(lambda s: s.fog is not None and s.time == "day")


def test_output_types_and_range():
    rgb, lab = render_scene(DAY, FULL, (48, 80))
    assert rgb.shape == (48, 80, 3) and rgb.dtype == np.float32
    assert lab.shape == (48, 80) and np.issubdtype(lab.dtype, np.integer)
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    assert lab.max() < len(LABELS)
    assert rgb.std() > 0.05  # not a flat image


def test_sample_scene_many_seeds():
    for s in range(3000):
        sc = sample_scene(s)
        assert sc.time in ("day", "sunset", "night") and 2 <= len(sc.ridges) <= 4
        assert sc.horizon < sc.grass and (sc.lake is None or sc.horizon < sc.lake < sc.grass)


def test_determinism_per_seed():
    assert sample_scene(123) == sample_scene(123)
    assert isinstance(sample_scene(123), Scene)
    a, la = render_scene(sample_scene(123), FULL, (64, 64))
    b, lb = render_scene(sample_scene(123), FULL, (64, 64))
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    c, _ = render_scene(sample_scene(124), FULL, (64, 64))
    assert np.abs(a - c).mean() > 0.02
    assert len({sample_scene(s) for s in range(20)}) == 20


@pytest.mark.parametrize("scene", [DAY, SUNSET_LAKE, NIGHT_LAKE, FOGGY], ids=lambda s: f"seed{s.seed}")
def test_crop_equals_crop_of_larger_render(scene):
    crop, lcrop = render_scene(scene, (0.25, 0.25, 0.75, 0.75), (128, 128))
    full, lfull = render_scene(scene, FULL, (256, 256))
    assert np.abs(crop - full[64:192, 64:192]).max() <= 1e-5
    assert np.array_equal(lcrop, lfull[64:192, 64:192])
    # Also a non-centred, non-square crop.
    crop, _ = render_scene(scene, (0.5, 0.125, 0.75, 0.875), (192, 64))
    assert np.abs(crop - full[32:224, 128:192]).max() <= 1e-5


@pytest.mark.parametrize("scene", [DAY, SUNSET_LAKE, NIGHT_LAKE, FOGGY, sample_scene(7)],
                         ids=lambda s: f"seed{s.seed}")
def test_scale_consistency_full_view(scene):
    lo, _ = render_scene(scene, FULL, (256, 256))
    hi, _ = render_scene(scene, FULL, (1024, 1024))
    assert psnr(lo, area_down(hi, 4)) >= 35.0


def test_scale_consistency_zoomed_box():
    box = (0.3, 0.35, 0.55, 0.6)  # mountains, tree line and water at 4x zoom
    lo, _ = render_scene(SUNSET_LAKE, box, (256, 256))
    hi, _ = render_scene(SUNSET_LAKE, box, (1024, 1024))
    assert psnr(lo, area_down(hi, 4)) >= 35.0


@pytest.mark.parametrize("scene", [DAY, NIGHT_LAKE, FOGGY], ids=lambda s: f"seed{s.seed}")
def test_scale_consistency_coarse(scene):
    # Coarser than the spec asks for (8x8 blocks): still consistent.
    lo, _ = render_scene(scene, FULL, (64, 64))
    hi, _ = render_scene(scene, FULL, (512, 512))
    assert psnr(lo, area_down(hi, 8)) >= 35.0


def test_noise_octaves_are_box_filtered():
    # Each pixel of the 1-D fbm equals the mean of the (unfiltered) fbm over the pixel.
    W, c = 40, 1.0 / 256  # all octaves below have pixel half-width < 0.5 lattice cells
    X = 0.3 + c * (np.arange(W) + 0.5)
    val, der = L._fbm1(X, c, 77, 2.0, 6)
    fine = 0.3 + c * (np.arange(W * 400) + 0.5) / 400
    ref, _ = L._fbm1(fine, c / 400, 77, 2.0, 6)
    assert np.abs(val - ref.reshape(W, 400).mean(1)).max() < 1e-6
    # The derivative is that of the box-filtered curve.
    v2, _ = L._fbm1(X + 1e-6, c, 77, 2.0, 6)
    assert np.allclose((v2 - val) / 1e-6, der, atol=1e-3 * np.abs(der).max())


def test_sub_pixel_noise_is_dropped():
    X = (np.arange(16) + 0.5) / 16
    assert np.all(L._fbm2(X, X, 1 / 16, 1 / 16, 5, 200.0, 200.0, 6) == 0.0)
    X = (np.arange(1024) + 0.5) / 1024
    assert L._fbm2(X, X[:64], 1 / 1024, 1 / 1024, 5, 200.0, 200.0, 6).std() > 0.1


def test_tree_spikes_fade_below_pixel_size():
    X = np.linspace(0.0, 1.0, 200)
    h, dh, _ = L._trees(X, 0.05, 9, period=0.02, height=0.05)  # trees 0.4 px wide
    assert np.ptp(h) == 0.0 and np.all(dh == 0.0)
    h, dh, _ = L._trees(X, 0.002, 9, period=0.02, height=0.05)  # trees 10 px wide
    assert np.ptp(h) > 0.02 and np.abs(dh).max() > 1.0


def test_zoomed_crop_costs_like_a_same_size_image():
    sc = SUNSET_LAKE

    def cpu_time(box):
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            render_scene(sc, box, (256, 256))
            best = min(best, time.process_time() - t)
        return best

    full = cpu_time(FULL)
    crop = cpu_time((0.45, 0.40, 0.45 + 1 / 32, 0.40 + 1 / 32))  # 256 px of an 8192 view
    assert crop < 2.5 * full


def test_stars_are_cell_aware():
    # A strip of clear night sky: most stars are sub-pixel at 128 px but must render
    # the same light as the 4x render averaged down (point-sampled stars would not).
    sc = CLEAR_NIGHT
    top = 0.9 * min(r[0] - 2.2 * r[1] for r in sc.ridges)  # above every ridge
    box = (0.0, 0.0, 1.0, top)
    lo, lab = render_scene(sc, box, (64, 256))
    hi, _ = render_scene(sc, box, (256, 1024))
    assert np.all(np.isin(lab, [LABELS.index("sky"), LABELS.index("moon")]))
    hi_lum = hi.mean(2)
    stars_hi = hi_lum - np.median(hi_lum, axis=1, keepdims=True) > 0.2
    assert stars_hi.sum() >= 20  # there are bright stars at the fine resolution
    # Compare away from the moon (its glow is smooth but not a point feature).
    ys = top * (np.arange(64) + 0.5) / 64
    xs = (np.arange(256) + 0.5) / 256
    far = np.hypot(xs[None, :] - sc.orb[0], ys[:, None] - sc.orb[1]) > 4 * sc.orb[2]
    err = np.abs(lo - area_down(hi, 4)).max(axis=2)[far]
    assert err.max() < 0.01
    assert psnr(lo, area_down(hi, 4)) >= 40.0


def test_labels_sanity():
    _, lab = render_scene(CLEAR_NIGHT, FULL, (128, 128))
    sky, moon = LABELS.index("sky"), LABELS.index("moon")
    assert np.all(np.isin(lab[0], [sky, moon])) and (lab[0] == sky).mean() > 0.8
    for sc in (DAY, SUNSET_LAKE, NIGHT_LAKE, FOGGY):
        _, lab = render_scene(sc, FULL, (128, 128))
        assert np.all(lab[-1] == LABELS.index("grass"))  # foreground band reaches the bottom
        assert np.isin(lab, [LABELS.index("mountain"), LABELS.index("snow")]).mean() > 0.05
    # Mid-lake rows are water.
    sc = SUNSET_LAKE
    y = (sc.lake + sc.grass - 0.03) / 2
    _, lab = render_scene(sc, (0.0, y, 1.0, y + 0.01), (1, 64))
    assert np.all(lab == LABELS.index("water"))


def test_captions():
    sc = SUNSET_LAKE
    water_box = (0.0, sc.lake + 0.01, 1.0, sc.grass - 0.035)
    _, lab = render_scene(sc, water_box, (64, 64))
    assert (lab == LABELS.index("water")).mean() > 0.9
    assert "lake" in caption(sc, water_box)
    assert "sunset" in caption(sc, water_box)
    sky_box = (0.0, 0.0, 1.0, 0.1)
    assert "night" in caption(CLEAR_NIGHT, sky_box)
    full = caption(DAY)
    assert "mountains" in full and "forest" in full and "sky" in full
    prompts = label_captions()
    assert set(prompts) == set(LABELS) and all(isinstance(p, str) and p for p in prompts.values())
    assert len(set(prompts.values())) == len(LABELS)


@pytest.mark.parametrize("box", [(-0.1, 0, 1, 1), (0, 0, 1.2, 1), (0.5, 0, 0.5, 1), (0.6, 0, 0.4, 1),
                                 (0, 0.7, 1, 0.2), (0, 0, 1), "full", (0, 0, 1, float("nan"))])
def test_bad_box(box):
    with pytest.raises(ValueError, match="box"):
        render_scene(DAY, box, (8, 8))


@pytest.mark.parametrize("size", [(0, 8), (8, -1), (8,), (8.0, 8), 8, (True, 8)])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        render_scene(DAY, FULL, size)


def test_error_message_names_value():
    with pytest.raises(ValueError, match=r"box=\(0\.6, 0, 0\.4, 1\)"):
        render_scene(DAY, (0.6, 0, 0.4, 1), (8, 8))
    with pytest.raises(ValueError, match=r"size=\(0, 8\)"):
        render_scene(DAY, FULL, (0, 8))


def test_deep_zoom_and_tiny_sizes():
    rgb, _ = render_scene(SUNSET_LAKE, (0.4, 0.45, 0.4 + 1 / 64, 0.45 + 1 / 64), (64, 64))  # 4096 view
    assert np.isfinite(rgb).all() and rgb.std() > 0.005
    tiny, _ = render_scene(DAY, (0.5, 0.5, 0.5 + 1e-6, 0.5 + 1e-6), (4, 4))
    assert np.isfinite(tiny).all()
    one, lab = render_scene(NIGHT_LAKE, FULL, (1, 1))
    assert one.shape == (1, 1, 3) and np.isfinite(one).all() and lab.shape == (1, 1)


def test_dataset_mixed_resolution():
    ds = LandscapeDataset(200, seed=0, high_res_fraction=0.1, low_res=256, high_res=1024)
    res = np.array([ds.max_resolution(i) for i in range(len(ds))])
    assert set(res.tolist()) == {256, 1024} and (res == 1024).sum() == 20
    lo = int(np.argmax(res == 256))
    hi = int(np.argmax(res == 1024))
    rgb, _ = ds.get(lo, (0.0, 0.0, 0.25, 0.25))  # default size: the box at 256 -> 64x64
    assert rgb.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="resolution"):
        ds.get(lo, (0.0, 0.0, 0.25, 0.25), (65, 65))
    with pytest.raises(ValueError, match="resolution"):
        ds.get(lo, FULL, (512, 512))
    rgb, _ = ds.get(hi, (0.0, 0.0, 0.25, 0.25), (256, 256))
    assert np.array_equal(rgb, render_scene(ds.scene(hi), (0.0, 0.0, 0.25, 0.25), (256, 256))[0])
    with pytest.raises(ValueError, match="resolution"):
        ds.get(hi, (0.0, 0.0, 0.25, 0.25), (257, 257))
    assert all(LandscapeDataset(10, mixed=False).max_resolution(i) == 1024 for i in range(10))


def test_dataset_splits_are_disjoint_and_deterministic():
    train = LandscapeDataset(50, seed=3, split="train")
    test = LandscapeDataset(50, seed=3, split="test")
    tr = {train.scene(i).seed for i in range(50)}
    te = {test.scene(i).seed for i in range(50)}
    assert not tr & te and min(te) >= TEST_SEED_OFFSET and max(tr) < TEST_SEED_OFFSET
    again = LandscapeDataset(50, seed=3, split="train")
    assert [train.max_resolution(i) for i in range(50)] == [again.max_resolution(i) for i in range(50)]
    with pytest.raises(IndexError):
        train.scene(50)
    with pytest.raises(ValueError, match="split"):
        LandscapeDataset(5, split="val")


def test_orb_crops_show_the_sun_or_moon_large():
    """Random crops (sides >= 0.1) never show the sun large; the CLIP's pool has crops around it, labelled by
    the scene's own pixels."""
    from infd_solve.data import crops

    rng, shares = np.random.default_rng(5), []
    for _ in range(40):
        scene = crops.random_scene(rng, "test")
        box = crops.orb_box(rng, scene)
        side = box[2] - box[0]
        assert min(box) >= 0 and max(box) <= 1 + 1e-9 and box[3] - box[1] == pytest.approx(side)
        assert 2 * scene.orb[2] - 1e-9 <= side <= 4 * scene.orb[2] + 1e-9
        _, lab = render_scene(scene, box, (32, 32))
        shares.append(max(float((lab == k).mean()) for k in crops.ORBS))
    assert np.median(shares) >= 0.2, np.round(shares, 2)
    images, labels = crops.orb_crops(6, 32, seed=3)
    assert images.shape == (6, 32, 32, 3) and set(labels) <= set(crops.ORBS)
    dominant = lambda share: {crops.captioned_crop(np.random.default_rng([0, i]), 32, orb_crops=share)[2]
                              for i in range(200)}
    assert not dominant(0.0) & set(crops.ORBS), "random crops were thought never to show the sun or moon large"
    assert dominant(0.1) & set(crops.ORBS), "no orb crop of the pool shows the sun or moon large"
