"""Layouts: JSON -> settings + constraints, and validation messages that point at the bad item and field."""

import inspect
import json
import math
import re
import warnings

import numpy as np
import pytest
import shapely
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from infd_solve.constraints import ClipBox, ColorMatch, LowResObservation, MaskedObservation
from infd_solve import checks
from infd_solve.constraints import REGISTRY, Constraint
from infd_solve.layout import LAYOUT_FIELDS, LayoutError, LayoutSettings, parse_layout, read_layout
from infd_solve.options import DEFAULT_STEPS
from infd_solve.solver import Solver, option_names, solver_options

from .helpers import REPO, make_gaussian_model, save_tiny_clip, tiny_model

open_clip = pytest.importorskip("open_clip")

HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from infd_solve.clip import load_clip

    return load_clip(save_tiny_clip(tmp_path_factory.mktemp("clip")))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with a 32x32 RGB photo, a 16x16 RGBA image, a 32x16 image and two 32x32 masks."""
    root = tmp_path_factory.mktemp("layout_images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "photo.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(root / "small.png")
    Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(root / "tall.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:16, :16]).save(root / "mask16.png")
    return root


def color(box=(0.0, 0.0, 1.0, 1.0), **kw):
    return {"type": "color", "color": "#336699", "box": list(box), **kw}


def error_of(layout, **kw) -> str:
    with pytest.raises(LayoutError) as e:
        parse_layout(layout, **kw)
    return str(e.value)


# ----------------------------------------------------------------------------------------- building


def test_minimal_layout_gets_the_defaults():
    s, cs = parse_layout({"items": [color()]})
    assert (s.canvas, s.seed, s.steps, s.sampler, s.guidance_scale, s.eta, s.batch_size) == (
        (512, 512), 0, None, "auto", 1.0, 1.0, 1)  # a solve decides the family and its steps
    # a layout passes on the options it sets, and the Solver fills in the rest (one table: infd_solve.options)
    assert s.solver_kwargs() == {}
    options = solver_options(constraints=cs, **s.solver_kwargs())
    assert (options["sampler"], options["steps"], options["eta"]) == ("dps", DEFAULT_STEPS, 1.0)
    assert len(cs) == 1 and isinstance(cs[0], ColorMatch) and cs[0].box == (0.0, 0.0, 1.0, 1.0)


def test_every_item_type_from_a_file_with_relative_paths(images, clip, tmp_path):
    layout = {
        "canvas": [96, 128], "seed": 3, "steps": 10, "sampler": "mpgd", "guidance_scale": 0.5, "eta": 0.0,
        "batch_size": 2, "normalize": False, "max_grad_norm": 2.0, "refine_steps": 7, "refine_anchor": 0.5,
        "keep_outside": True,
        "description": "all types",
        "items": [
            {"type": "clip", "prompt": "clouds", "box": [0, 0, 1, 0.4], "weight": 2, "negative_prompts": ["fog"],
             "negative_weight": 0.25, "active": [100, 900]},
            {"type": "color", "color": [0.2, 0.4, 0.6], "polygon": [[0.1, 0.5], [0.9, 0.55], [0.5, 1.2]]},
            {"type": "observation", "image": "imgs/photo.png", "mask": "imgs/mask.png", "box": [0.5, 0.5, 1, 1]},
            {"type": "observation", "image": "imgs/photo.png", "mask": [[0, 0], [0.5, 0], [0.5, 0.5]],
             "name": "corner"},
            {"type": "lowres", "image": "imgs/small.png", "noise_sigma": 0.1, "operator": "area", "factor": 2},
        ],
    }
    (tmp_path / "imgs").symlink_to(images)
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(layout))
    with pytest.warns(UserWarning, match=r"items\[4\] \(lowres\): image \(small.png\).*alpha"):
        s, cs = parse_layout(path, clip=clip)
    assert s.canvas == (96, 128) and s.seed == 3 and s.batch_size == 2 and s.source == path.resolve()
    assert s.solver_kwargs() == {"steps": 10, "sampler": "mpgd", "eta": 0.0, "guidance_scale": 0.5, "normalize": False,
                                 "max_grad_norm": 2.0, "refine_steps": 7, "refine_anchor": 0.5, "keep_outside": True}
    assert [type(c) for c in cs] == [ClipBox, ColorMatch, MaskedObservation, MaskedObservation, LowResObservation]
    assert [c.name for c in cs] == ["clip:clouds", "color:rgb(0.20, 0.40, 0.60)", "observation", "corner", "low-res"]
    assert cs[0].weight == 2.0 and cs[0].active == (100, 900) and cs[0].negatives.shape[0] == 1
    assert cs[0].negative_weight == 0.25 and cs[0].views == 4  # a 128 x 38.4 pixel box: 3.33:1
    assert cs[0].size == (clip.size, round(clip.size * 128 / 38.4))
    assert cs[1].box == pytest.approx((0.1, 0.5, 0.9, 1.0))  # the polygon's part inside the canvas
    assert cs[1].mask.sum() > 0 and cs[1].mask.min() == 0  # rasterized polygon, not the whole box
    assert cs[2].box == (0.5, 0.5, 1.0, 1.0) and cs[2].mask[0, 0, :, :16].min() == 1 and cs[2].mask[..., 16:].max() == 0
    assert 0 < cs[3].mask.mean() < 0.6
    assert cs[4].mode == "area" and cs[4].size == (32, 32) and cs[4].noise_sigma == 0.1
    assert cs[2].input_files == ((images / "photo.png").resolve(), (images / "mask.png").resolve())
    assert cs[1].geometry.area == pytest.approx(shapely.intersection(
        shapely.Polygon([(0.1, 0.5), (0.9, 0.55), (0.5, 1.2)]), shapely.box(0, 0, 1, 1)).area)
    # the same dict with an explicit base_dir gives the same constraints
    with pytest.warns(UserWarning, match="alpha"):
        s2, cs2 = parse_layout(layout, clip=clip, base_dir=tmp_path)
    assert [c.box for c in cs2] == [c.box for c in cs] and s2.source is None


def test_color_grid_follows_the_box_aspect_on_the_canvas():
    _, (wide, tall) = parse_layout({"canvas": [100, 400], "items": [color((0, 0, 1, 1)), color((0, 0, 0.1, 1))]})
    assert wide.size == (8, 32) and tall.size == (32, 13)


def test_duplicate_default_names_become_unique_and_solve(tmp_path):
    s, cs = parse_layout({"items": [color(), color((0, 0, 0.5, 0.5)), color(name="mine")]})
    assert [c.name for c in cs] == ["color:#336699", "color:#336699 #1", "mine"]
    model = tiny_model(normalize=False)
    torch.set_num_threads(1)
    result = Solver(model, steps=2, progress=False).solve(cs, seed=0)
    assert set(result.history["loss"]) == {c.name for c in cs}


def test_clip_items_load_the_named_clip(tmp_path):
    clip_dir = save_tiny_clip(tmp_path / "clip")
    _, (c,) = parse_layout({"items": [{"type": "clip", "prompt": "a lake", "box": [0, 0.5, 1, 1]}]}, clip=clip_dir)
    assert isinstance(c, ClipBox) and c.prompt == "a lake" and (c.size, c.views) == ((32, 64), 2)  # 2:1 box
    # the same box on a canvas twice as tall is square: the layout's canvas gives boxes their true shape
    _, (c,) = parse_layout({"canvas": [1024, 512], "items": [{"type": "clip", "prompt": "a lake",
                                                              "box": [0, 0.5, 1, 1]}]}, clip=clip_dir)
    assert (c.size, c.views) == ((32, 32), 1)


def test_layout_without_clip_items_never_loads_a_clip(monkeypatch):
    import infd_solve.clip

    monkeypatch.setattr(infd_solve.clip, "load_clip", lambda *a, **k: pytest.fail("CLIP loaded"))
    parse_layout({"items": [color()]}, clip="/no/such/clip")


@pytest.mark.parametrize("name", ["landscape_2048", "quick_512"])
def test_shipped_examples_parse(name, clip):
    path = REPO / "recipes" / "examples" / f"{name}.json"
    s, cs = parse_layout(path, clip=clip)
    assert s.canvas == {"landscape_2048": (2048, 2048), "quick_512": (512, 512)}[name]
    from infd_solve.data import label_captions

    known = set(label_captions().values())
    assert {c.prompt for c in cs if isinstance(c, ClipBox)} <= known  # prompts the default domain CLIP knows
    if name == "landscape_2048":
        assert [c.prompt for c in cs] == ["clouds", "snowy mountains", "a forest", "a lake"]
        assert cs[2].geometry is not None and cs[2].label == "a forest"


class Vignette(Constraint):
    """A constraint defined outside the library, as a user would: one class, no edit anywhere else."""

    layout_type = "test-vignette"

    def __init__(self, darkness: float, box=None, polygon=None, **kwargs):
        super().__init__(box=box, polygon=polygon, size=(8, 8), **{"name": f"vignette:{darkness}"} | kwargs)
        self.darkness = checks.number(darkness, "darkness", 0.0, 1.0)

    def loss(self, patch):
        return (patch.mean((1, 2, 3)) + self.darkness).square()


def test_a_new_constraint_works_in_layouts_solves_reports_and_overlays(tmp_path):
    layout = {"canvas": 64, "items": [{"type": "test-vignette", "darkness": 0.5, "polygon": [[0, 0], [1, 0], [0, 1]],
                                       "weight": 2, "active": [0, 999]}, color()]}
    settings, (c, _) = parse_layout(layout)
    assert isinstance(c, Vignette) and (c.darkness, c.weight, c.active) == (0.5, 2.0, (0, 999))
    assert c.geometry is not None and c.box == (0.0, 0.0, 1.0, 1.0)
    # the constructor's own checks, reported at the item's field; unknown fields name the allowed ones
    assert error_of({"items": [{"type": "test-vignette", "darkness": 3}]}).startswith(
        "items[0].darkness: must be a finite number >= 0 and <= 1")
    assert "allowed: active, box, darkness, name, polygon, refine, weight" in error_of(
        {"items": [{"type": "test-vignette", "darkness": 0.1, "size": 4}]})
    assert error_of({"items": [{"type": "test-vignette"}]}).startswith("items[0].darkness: missing")
    model = tiny_model(normalize=False)
    result = Solver(model, steps=2, progress=False).solve([c], seed=0)
    assert result.report()["vignette:0.5"].keys() == {"loss", "guided"}
    assert result.report()["vignette:0.5"]["guided"] == [1.0]
    from infd_solve.viz import plot_layout

    image = result.save(tmp_path / "out.png", 64)
    assert plot_layout(image, settings.canvas, [c], tmp_path / "overlay.png").stat().st_size > 0


def test_solve_layout_solves_a_file_with_its_own_settings(tmp_path):
    import infd_solve

    layout = {"canvas": [24, 40], "steps": 2, "seed": 4, "batch_size": 2, "items": [color((0, 0, 0.5, 1))]}
    (tmp_path / "l.json").write_text(json.dumps(layout))
    model = tiny_model(normalize=False)
    result = infd_solve.solve_layout(tmp_path / "l.json", tmp_path / "out.png", model=model, progress=False)
    assert len(result.latent) == 2 and result.history["sampling_steps"] == 2
    for i in range(2):  # written at the layout's canvas, one file per sample
        with Image.open(tmp_path / f"out_{i}.png") as image:
            assert image.size == (40, 24)
    again = Solver(model, steps=2, progress=False).solve(parse_layout(layout)[1], batch_size=2, seed=4)
    assert torch.equal(result.latent, again.latent)  # the layout's seed and steps, nothing else
    with pytest.raises(ValueError, match="cannot write"):  # the output is checked before any work
        infd_solve.solve_layout(layout, tmp_path / "out.unknown", model=model)


def test_layout_types_are_unique():
    with pytest.raises(TypeError, match="layout type 'clip' .* is already taken"):
        type("Impostor", (Constraint,), {"layout_type": "clip", "loss": lambda self, patch: patch.mean()})


# ----------------------------------------------------------------------------------------- validation

BAD = [
    # (layout, fragments the message must contain)
    ({"stpes": 3, "items": [color()]},
     ["layout: unknown field 'stpes'", "did you mean 'steps'", "allowed: batch_size, canvas"]),
    ({"items": [color(), {"type": "color", "colour": "#fff", "box": [0, 0, 1, 1]}]},
     ["items[1] (color): unknown field 'colour'", "allowed: active, box, color, name, polygon, refine, size, weight"]),
    ({"items": [{"type": "text", "prompt": "x"}]},
     ["items[0].type: unknown type 'text'", "allowed: blur, clip, color, lowres"]),
    ({"items": [{"prompt": "x"}]}, ["items[0]: missing field 'type'"]),
    ({"items": [color(), {"type": "clip", "box": [0, 0, 1, 1]}]}, ["items[1].prompt: missing"]),
    ({"items": [{"type": "clip", "prompt": "  ", "box": [0, 0, 1, 1]}]},
     ["items[0].prompt: must be a non-empty string"]),
    ({"items": [{"type": "clip", "prompt": 3, "box": [0, 0, 1, 1]}]}, ["items[0].prompt: must be a non-empty string"]),
    ({"items": [color(), color(), color(), color((0, 0, 1.5, 1))]}, ["items[3].box:", "lies outside the canvas"]),
    ({"items": [color((0.5, 0, 0.2, 1))]}, ["items[0].box:", "inverted or has zero area"]),
    ({"items": [color((0, 0, 1))]}, ["items[0].box:", "four numbers"]),
    ({"items": [{"type": "color", "color": "#fff000", "box": "0 0 1 1"}]}, ["items[0].box:", "four numbers"]),
    ({"items": [color(polygon=[[0, 0], [1, 0], [1, 1]])]}, ["items[0] (color): give either box or polygon, not both"]),
    ({"items": [{"type": "color", "color": "#fff000", "polygon": [[1.2, 1.2], [2, 1.5], [1.5, 2]]}]},
     ["items[0].polygon:", "covers no area of the canvas"]),
    ({"items": [{"type": "color", "color": "#fff000", "polygon": [[0, 0], [1, 1]]}]},
     ["items[0].polygon:", "at least three"]),
    ({"items": [{"type": "color", "color": "#fff000", "polygon": "triangle"}]}, ["items[0].polygon:"]),
    ({"canvas": 0, "items": [color()]}, ["canvas:", "positive"]),
    ({"canvas": [64, 0], "items": [color()]}, ["canvas:"]),
    ({"canvas": [64, 64, 3], "items": [color()]}, ["canvas:"]),
    ({"canvas": "big", "items": [color()]}, ["canvas:"]),
    ({"canvas": 64.5, "items": [color()]}, ["canvas:"]),
    ({"canvas": True, "items": [color()]}, ["canvas:"]),
    ({"canvas": 10**6, "items": [color()]}, ["canvas:", "larger than"]),
    ({"steps": 0, "items": [color()]}, ["steps: must be an integer >= 1"]),
    ({"steps": 999, "items": [color()]}, ["steps:", "cannot be spaced evenly"]),
    ({"seed": -1, "items": [color()]}, ["seed:"]),
    ({"sampler": "cfg", "items": [color()]}, ["sampler: 'cfg' is unknown; registered: daps, dps, mpgd, resample"]),
    ({"sampler": "daps", "eta": 0.5, "items": [color()]}, ["layout: unknown field 'eta'", "langevin_steps"]),
    ({"guidance_scale": -1, "items": [color()]}, ["guidance_scale: must be a finite number >= 0"]),
    ({"scale": 1, "items": [color()]}, ["layout: unknown field 'scale'", "did you mean"]),
    ({"eta": 1.5, "items": [color()]}, ["eta: must be a finite number >= 0 and <= 1"]),
    ({"refine_steps": -1, "items": [color()]}, ["refine_steps: must be an integer >= 0"]),
    ({"eta": float("nan"), "items": [color()]}, ["eta:"]),
    ({"batch_size": 0, "items": [color()]}, ["batch_size:"]),
    ({"normalize": "yes", "items": [color()]}, ["normalize:"]),
    ({"max_grad_norm": 0, "items": [color()]}, ["max_grad_norm: must be a finite number > 0"]),
    ({}, ["items: missing"]),
    ({"items": []}, ["items: must be a non-empty list"]),
    ({"items": {"type": "color"}}, ["items: must be a non-empty list"]),
    ({"items": [color(), "clouds"]}, ["items[1]: an item is a JSON object"]),
    ({"items": [color(weight=-1)]}, ["items[0].weight: must be a finite number >= 0"]),
    ({"items": [color(weight="1")]}, ["items[0].weight:"]),
    ({"items": [color(active=[500, 100])]}, ["items[0].active:", "t_min <= t_max"]),
    ({"items": [color(active=[1])]}, ["items[0].active:"]),
    ({"items": [color(name="")]}, ["items[0].name:"]),
    ({"items": [color(name="a"), color(name="a")]}, ["items[1].name: 'a' is already used by items[0]"]),
    ({"items": [{"type": "color", "color": "#zz0000", "box": [0, 0, 1, 1]}]}, ["items[0].color:", "#rrggbb"]),
    ({"items": [{"type": "color", "color": [1, 2, 3], "box": [0, 0, 1, 1]}]}, ["items[0].color:"]),
    ({"items": [{"type": "clip", "prompt": "x", "box": [0, 0, 1, 1], "negative_prompts": "fog"}]},
     ["items[0].negative_prompts: must be a list of non-empty strings"]),
    ({"items": [{"type": "observation", "image": "nope.png"}]}, ["items[0].image: no file at", "nope.png"]),
    ({"items": [{"type": "observation", "box": [0, 0, 1, 1]}]}, ["items[0].image: missing"]),
    ({"items": [{"type": "observation", "image": 5}]},
     ["items[0].image: must be a tensor, a PIL image or a file path"]),
    ({"items": [{"type": "observation", "image": "photo.png", "mask": "nomask.png"}]}, ["items[0].mask: no file at"]),
    ({"items": [{"type": "observation", "image": "photo.png", "mask": [[2, 2], [3, 2], [3, 3]]}]},
     ["items[0].mask:", "covers no area"]),
    ({"items": [{"type": "observation", "image": "photo.png", "mask": "mask16.png"}]},
     ["items[0].mask: is (16, 16) but the image is (32, 32)"]),
    ({"items": [{"type": "observation", "image": "photo.png", "box": [0, 0, 0.5, 0.5],
                 "mask": [[0.6, 0.6], [1, 0.6], [1, 1]]}]}, ["items[0].mask:", "observes no pixel"]),
    ({"items": [color(), {"type": "observation", "image": "tall.png"}]},
     ["items[1].image: is 32x16", "crop or pad"]),
    ({"items": [{"type": "lowres", "image": "photo.png", "operator": "nearest"}]},
     ["items[0].operator: must be one of 'render', 'area', 'bicubic'"]),
    ({"items": [{"type": "lowres", "image": "photo.png", "noise_sigma": -0.1}]}, ["items[0].noise_sigma:"]),
    ({"items": [{"type": "lowres", "image": "photo.png", "factor": 0}]}, ["items[0].factor:"]),
    ({"items": [{"type": "lowres", "image": "photo.png", "prompt": "x"}]},
     ["items[0] (lowres): unknown field 'prompt'",
      "allowed: active, box, factor, image, max_side, name, noise_sigma, operator, refine, trust, weight"]),
    ({"items": [{"type": "perceptual", "reference": "photo.png", "net": 3}]}, ["items[0].net:"]),
    ({"items": [{"type": "perceptual", "image": "photo.png"}]}, ["unknown field 'image'", "reference"]),
]


@pytest.mark.parametrize("layout,fragments", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_validation_errors_name_item_and_field(layout, fragments, images):
    message = error_of(layout, base_dir=images)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message


def test_layout_error_is_a_value_error():
    assert issubclass(LayoutError, ValueError)


def test_read_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match="no layout file"):
        parse_layout(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"items": [\n  {"type": "color",}\n]}')
    with pytest.raises(LayoutError, match=r"bad.json: not valid JSON: .* line 2"):
        read_layout(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(LayoutError, match="a layout is a JSON object"):
        parse_layout(bad)
    bad.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(LayoutError, match="not a text"):
        parse_layout(bad)
    with pytest.raises(LayoutError, match="expected a dict or a path"):
        parse_layout([color()])


def test_repaired_polygon_warning_names_the_item():
    bowtie = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]
    with pytest.warns(UserWarning, match=r"items\[1\] \(color\): polygon was not a valid polygon"):
        _, cs = parse_layout({"items": [color(), {"type": "color", "color": "#ffffff", "polygon": bowtie}]})
    assert cs[1].box == pytest.approx((0.1, 0.1, 0.9, 0.9))


def test_missing_default_clip_is_a_clear_error(monkeypatch, tmp_path):
    from infd_solve import pretrained

    monkeypatch.setattr(pretrained, "ROOT", tmp_path)
    with pytest.raises(LayoutError, match=r"items\[0\] \(clip\): the shipped CLIP 'default' is missing"):
        parse_layout({"items": [{"type": "clip", "prompt": "clouds", "box": [0, 0, 1, 1]}]})


# ----------------------------------------------------------------------------------------- properties

unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def valid_boxes(draw):
    a, b = draw(unit), draw(unit)
    c, d = draw(unit), draw(unit)
    assume(a != b and c != d)
    return [min(a, b), min(c, d), max(a, b), max(c, d)]


@st.composite
def invalid_boxes(draw):
    kind = draw(st.sampled_from(["outside", "inverted", "nonfinite"]))
    box = draw(valid_boxes())
    i = draw(st.integers(0, 3))
    if kind == "outside":
        box[i] = draw(st.one_of(st.floats(-10, -1e-6), st.floats(1 + 1e-6, 10)))
    elif kind == "inverted":
        box = [box[2], box[1], box[0], box[3]] if draw(st.booleans()) else [box[0], box[3], box[2], box[1]]
    else:
        box[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return box


@HYPOTHESIS
@given(box=valid_boxes(), position=st.integers(0, 3), kind=st.sampled_from(["clip", "color"]))
def test_any_valid_box_round_trips(clip, box, position, kind):
    item = color(box) if kind == "color" else {"type": "clip", "prompt": "clouds", "box": box}
    items = [color() for _ in range(3)]
    items.insert(position, item)
    s, cs = parse_layout({"items": items}, clip=clip)
    assert cs[position].box == tuple(box)
    assert isinstance(cs[position], ClipBox if kind == "clip" else ColorMatch)


@HYPOTHESIS
@given(box=invalid_boxes(), position=st.integers(0, 3))
def test_any_invalid_box_names_its_item(box, position):
    items = [color() for _ in range(3)]
    items.insert(position, color(box))
    message = error_of({"items": items})
    assert message.startswith(f"items[{position}].box: ")
    assert any(w in message for w in ("outside the canvas", "inverted", "NaN or inf"))


vertex = st.tuples(st.floats(-0.5, 1.5, allow_nan=False), st.floats(-0.5, 1.5, allow_nan=False))


@HYPOTHESIS
@given(points=st.lists(vertex, min_size=3, max_size=7), position=st.integers(0, 2))
@example(points=[(0.0, 0.0), (1.0, 0.0), (0.0, 0.5), (0.0, 1.0)], position=0)  # self-overlapping edge
@example(points=[(0.0, 1.175494351e-38), (1.0, 0.0), (-2.225073858507203e-309, 1.0)], position=0)  # GEOS -1e-309
@example(points=[(0.0, 1.175494351e-38), (0.0, 0.0), (1.0, 1.0)], position=0)  # area 6e-39
def test_random_polygons_give_a_covering_box_or_a_clear_error(points, position):
    items = [color(), color()]
    items.insert(position, {"type": "color", "color": "#00ff00", "polygon": [list(p) for p in points]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self-intersecting polygons are repaired with a warning
        try:
            s, cs = parse_layout({"items": items})
        except LayoutError as e:
            assert str(e).startswith(f"items[{position}].polygon: "), str(e)
            assert "no area" in str(e) or "vertices" in str(e)
            return
    repaired = shapely.intersection(shapely.make_valid(shapely.Polygon(points)), shapely.box(0, 0, 1, 1))
    # the polygon's canvas part: its areas (make_valid may also leave lines of a self-overlapping outline)
    inside = shapely.union_all([g for g in getattr(repaired, "geoms", [repaired])
                                if isinstance(g, (shapely.Polygon, shapely.MultiPolygon))])
    left, top, right, bottom = cs[position].box
    x0, y0, x1, y1 = inside.bounds
    eps = 1e-9
    assert left <= x0 + eps and top <= y0 + eps and right >= x1 - eps and bottom >= y1 - eps
    assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
    assert cs[position].mask.sum() > 0 or inside.area < 1e-3  # tiny slivers may miss every sample point


@HYPOTHESIS
@given(key=st.text(min_size=1, max_size=12), top=st.booleans(), kind=st.sampled_from(sorted(REGISTRY)))
def test_unknown_fields_are_named_with_the_allowed_ones(key, top, kind):
    allowed = [*LAYOUT_FIELDS, *option_names("dps")] if top else REGISTRY[kind].layout_fields()
    assume(key != "type")
    assume(key not in allowed)
    if top:
        layout = {"items": [color()], key: 1}
    else:
        item = {"type": kind, "prompt": "x", "color": "#ffffff", "image": "x.png", "reference": "x.png"}
        item = {k: v for k, v in item.items() if k in allowed or k == "type"}
        layout = {"items": [color(), {**item, key: 1}]}
    message = error_of(layout)
    where = "layout:" if top else f"items[1] ({kind}):"
    assert message.startswith(f"{where} unknown field {key!r}")
    assert message.endswith("allowed: " + ", ".join(sorted(allowed)))


@HYPOTHESIS
@given(canvas=st.one_of(st.integers(1, 4096), st.lists(st.integers(1, 4096), min_size=2, max_size=2)),
       steps=st.sampled_from([1, 2, 10, 25, 50, 100, 250, 1000]), seed=st.integers(0, 2**31),
       scale=st.floats(0, 100), sampler=st.sampled_from(["dps", "mpgd", "daps", "resample"]))
def test_valid_settings_round_trip(canvas, steps, seed, scale, sampler):
    s, _ = parse_layout({"canvas": canvas, "steps": steps, "seed": seed, "guidance_scale": scale,
                         "sampler": sampler, "items": [color()]})
    assert isinstance(s, LayoutSettings)
    assert s.canvas == ((canvas, canvas) if isinstance(canvas, int) else tuple(canvas))
    assert (s.steps, s.seed, s.guidance_scale, s.sampler) == (steps, seed, scale, sampler)


def test_error_messages_are_regex_safe_and_single_line():
    message = error_of({"items": [color((0, 0, 2, 1))]})
    assert re.match(r"items\[0\]\.box: box=\[0, 0, 2, 1\] lies outside the canvas", message)
