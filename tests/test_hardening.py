"""Bad input is refused clearly, before any work, by the public entry points; nothing is lost.

One test group per class of bug: sizes that cannot be served, numbers out of range, decompression bombs,
silent failures, outputs that cannot be written, raw exceptions from deep inside, command-line manners.
(Code-carrying checkpoints: tests/test_loading_errors.py.)
"""

import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import infd_solve
from infd_solve import Solver
from infd_solve.constraints import ClipBox, ColorMatch, LowResObservation, MaskedObservation
from infd_solve.io import load_image, load_mask
from infd_solve.layout import LayoutError, parse_layout

from .helpers import save_tiny_clip, tiny_model

QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
color = {"type": "color", "color": "#336699", "box": [0, 0, 1, 1]}


@pytest.fixture(scope="module")
def model():
    return tiny_model(normalize=False, seed=5)


def _png_declaring(path, width, height):
    """A few-hundred-byte PNG whose header declares width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------ 1. sizes
def test_sizes_that_cannot_be_served_are_refused_up_front(model, tiny_clip):
    with pytest.raises(ValueError, match="factor must be an integer >= 1 <= 16"):
        LowResObservation(torch.zeros(3, 8, 8), factor=10**9)
    with pytest.raises(ValueError, match="size=.* pixels, more than"):
        ColorMatch("#000000", size=(10**4, 10**4))
    with pytest.raises(ValueError, match="larger than 65536 pixels per side"):
        ColorMatch("#000000", size=(10**12, 10**12))
    with pytest.raises(ValueError, match="max_views must be an integer >= 1 <= 64"):
        ClipBox("clouds", clip=tiny_clip, canvas=(1e-300, 1), max_views=10**9)
    with pytest.raises(ValueError, match=r"batch_size=1000000000 .* needs about .* GB .* available"):
        Solver(model, steps=2, progress=False).solve([ColorMatch("#000000")], batch_size=10**9)
    with pytest.raises(LayoutError, match="items: 870000 items, more than"):
        parse_layout({"items": [color] * 870_000})


def test_saving_streams_png_bands(model, tmp_path, monkeypatch):
    """A PNG is written band by band: no whole-canvas tensor is ever made."""
    import infd_solve.rendering

    result = Solver(model, steps=2, progress=False).solve([], seed=0)
    monkeypatch.setattr(infd_solve.rendering, "render_image",
                        lambda *a, **k: pytest.fail("the whole canvas was rendered at once"))
    (path,) = result.save(tmp_path / "big.png", (300, 257), tile=64)
    with Image.open(path) as im:
        assert im.size == (257, 300) and im.mode == "RGB"


# ------------------------------------------------------------------------------------ 3. numbers in range
@QUICK
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**400), st.booleans(),
                 st.text(max_size=3), st.none()))
def test_solver_numbers_are_checked_where_they_enter(model, value):
    def valid(v, low, high, strict=False):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        try:
            ok = ok and math.isfinite(v) and (v > low if strict else v >= low) and (high is None or v <= high)
        except OverflowError:
            ok = False
        return ok

    for option, low, high, strict in (("eta", 0, 1, False), ("guidance_scale", 0, 1e6, False),
                                      ("max_grad_norm", 0, None, True), ("refine_lr", 0, None, True)):
        if option == "max_grad_norm" and value is None:
            continue
        if valid(value, low, high, strict):
            Solver(model, steps=2, **{option: value})
        else:
            with pytest.raises(ValueError, match=f"^{option}: must be a finite number"):
                Solver(model, steps=2, **{option: value})


@pytest.mark.parametrize("kwargs,message", [
    ({"weight": 1e308}, "weight must be a finite number >= 0 and <= 1e\\+06"),
    ({"weight": float("nan")}, "weight must be"),
    ({"weight": -1}, "weight must be"),
    ({"active": (0.9, 10.7)}, "active must be"),
    ({"active": (True, 5)}, "active must be"),
])
def test_constraint_numbers_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ColorMatch("#000000", **kwargs)


def test_eta_is_checked_on_models_and_samples(model, tmp_path):
    with pytest.raises(ValueError, match="eta must be a finite number >= 0 and <= 1"):
        model.sample(1, steps=2, eta=1.5, progress=False)
    config = json.loads((model.save(tmp_path / "m") / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(config | {"ddim_eta": 2.0}))
    with pytest.raises(infd_solve.CheckpointError, match="invalid model config .*ddim_eta"):
        infd_solve.load_model(tmp_path / "m")


def test_noise_sigma_and_negative_weight_must_be_finite(tiny_clip):
    with pytest.raises(ValueError, match="noise_sigma must be a finite number"):
        LowResObservation(torch.zeros(3, 8, 8), noise_sigma=math.inf)
    with pytest.raises(ValueError, match="negative_weight must be a finite number"):
        ClipBox("clouds", clip=tiny_clip, negative_weight=math.nan)


# ------------------------------------------------------------------------------------ 4. decompression bombs
@pytest.mark.parametrize("as_what", ["image", "mask", "layout"])
def test_decompression_bombs_are_refused_naming_the_file(tmp_path, as_what):
    bomb = _png_declaring(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 1000
    if as_what == "layout":
        with pytest.raises(LayoutError, match=r"items\[0\]\.image: .*bomb.png declares 900000000 pixels"):
            parse_layout({"items": [{"type": "observation", "image": "bomb.png"}]}, base_dir=tmp_path)
        return
    load = load_image if as_what == "image" else load_mask
    with pytest.raises(ValueError, match="bomb.png declares 900000000 pixels, more than"):
        load(bomb)


# ------------------------------------------------------------------------------------ 5. silent failures
def test_float_images_keep_their_values():
    im = Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F")
    with pytest.warns(UserWarning, match="mode F read as values in \\[0, 1\\]"):
        x = load_image(im)
    assert torch.allclose(x, torch.zeros_like(x))  # 0.5 in [0, 1] is 0 in [-1, 1], not black


def test_observation_batch_must_match_the_solve(model):
    two = MaskedObservation(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="holds 2 observations but batch_size=1"):
        Solver(model, steps=2, progress=False).solve([two], batch_size=1)
    assert len(Solver(model, steps=2, refine_steps=0, progress=False).solve([two], batch_size=2).latent) == 2


def test_a_constraint_that_never_guides_is_reported(model):
    class Broken(ColorMatch):
        def loss(self, patch):
            return super().loss(patch) * math.inf

    with pytest.warns(RuntimeWarning, match="guidance never happened for 'broken'"):
        result = Solver(model, steps=2, progress=False).solve([Broken("#000000", name="broken"),
                                                               ColorMatch("#ffffff")], seed=0)
    assert result.never_guided() == {"broken": [0], "color:#ffffff": [0]}  # the whole sample went unguided


def test_polygons_in_pixels_are_refused_naming_the_mistake():
    """Vertices may lie outside the canvas (the region is clipped), but not several canvas sides away."""
    assert ColorMatch("#000000", polygon=[(-0.5, 0), (1.5, 0), (0.5, 2)]).box == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"polygon reaches \(100.0, 100.0, 300.0, 300.0\).*not pixels"):
        ColorMatch("#000000", polygon=[(100, 100), (300, 100), (300, 300)])
    with pytest.raises(LayoutError, match=r"items\[0\]\.polygon: reaches .*not pixels"):
        parse_layout({"items": [{"type": "color", "color": "#000000", "polygon": [[0, 0], [64, 0], [64, 64]]}]})


@pytest.mark.parametrize("box", ["0011", [True, False, 1, 1], {"a": 1}, [0, 0, 1]])
def test_boxes_must_be_four_numbers(box):
    with pytest.raises(ValueError, match="box must be four numbers"):
        ColorMatch("#000000", box)


def test_long_prompts_say_what_clip_reads(tiny_clip):
    with pytest.warns(UserWarning, match="tokens; this CLIP reads 30, so it sees only"):
        ClipBox("clouds " * 40, clip=tiny_clip)


def test_save_refuses_what_it_cannot_write(model, tmp_path):
    result = Solver(model, steps=2, progress=False).solve([], seed=0)
    (tmp_path / "file").write_text("x")
    for bad, message in ((tmp_path / "x.txt", "cannot write RGB images as '.txt'"), (tmp_path, "is a directory"),
                         ("", "output path is empty"), (tmp_path / "file" / "x.png", "is a file, not a directory"),
                         (tmp_path / "x.xbm", "cannot write RGB images as '.xbm'")):
        with pytest.raises(ValueError, match=message):
            result.save(bad, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing half-written


# ------------------------------------------------------------------------------------ 7. raw exceptions
@pytest.mark.parametrize("layout,fragment", [
    ({"canvas": [math.inf, 64], "items": [color]}, "canvas: must be a positive int"),
    ({"canvas": 10**400, "items": [color]}, "canvas=("),
    ({"items": [{**color, "weight": 10**400}]}, "items[0].weight: must be a finite number"),
    ({"items": [{"type": ["color"]}]}, "items[0].type: unknown type ['color']"),
    ({"seed": 1.5, "items": [color]}, "seed: must be an integer"),
    ({"batch_size": "2", "items": [color]}, "batch_size: must be an integer"),
])
def test_layout_values_never_escape_as_raw_errors(layout, fragment):
    with pytest.raises(LayoutError) as e:
        parse_layout(layout)
    assert fragment in str(e.value)


def test_deeply_nested_layout_files_are_refused(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"items": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(LayoutError, match="nested too deeply|must be a non-empty list"):
        parse_layout(path)


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1"), ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"batch_size": "2"}, "batch_size must be an integer"), ({"seed": 1.5}, "seed must be an integer"),
    ({"seed": "abc"}, "seed must be an integer"), ({"seed": 2**64}, "seed must be an integer"),
])
def test_solve_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Solver(model, steps=2, progress=False).solve([ColorMatch("#000000")], **kwargs)


def test_numpy_scalars_and_arrays_are_numbers_and_sequences(model):
    c = ColorMatch("#000000", np.array([0.0, 0.0, 0.5, 0.5]), weight=np.float32(2.0))
    result = Solver(model, steps=np.int64(2), refine_steps=0, progress=False).solve([c], batch_size=np.int64(1),
                                                                                     seed=np.int64(3))
    assert c.weight == 2.0 and len(result.latent) == 1


def test_wrong_arguments_to_the_solver(model):
    with pytest.raises(ValueError, match="model must be an INFDModel"):
        Solver(None)
    with pytest.raises(ValueError, match="wrap a single one in a list"):
        Solver(model, steps=2).solve(ColorMatch("#000000"))
    with pytest.raises(ValueError, match="image is empty"):
        MaskedObservation(torch.zeros(3, 0, 8))


def test_model_files_of_the_wrong_kind(tmp_path, model):
    (tmp_path / "text.pth").write_text("not a checkpoint\n" * 10)
    with pytest.raises(infd_solve.CheckpointError, match="text.pth: not a PyTorch checkpoint"):
        infd_solve.load_model(tmp_path / "text.pth")
    saved = model.save(tmp_path / "m")
    config = json.loads((saved / "config.json").read_text())
    for field, value in (("z_shape", "3x8x8"), ("renderer", 5), ("encoder", {"ch": "32"}), ("n_embed", [1])):
        (saved / "config.json").write_text(json.dumps(config | {field: value}))
        with pytest.raises(infd_solve.CheckpointError, match="invalid model config"):
            infd_solve.load_model(saved)
    with pytest.raises(ValueError, match="is not a torch device"):
        infd_solve.load_model("default", device="bogus")


# ------------------------------------------------------------------------------------ 8. command-line manners
def test_command_errors_are_one_line(tmp_path, capsys):
    from infd_solve.cli import layout

    for argv in (["--steps", "x", "l.json"], ["l.json", "--device", "bogus"], []):
        status = layout.main(argv)
        err = capsys.readouterr().err
        assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("infd-layout: error:")


def test_a_lone_surrogate_in_a_prompt_is_refused_before_any_work(tmp_path, capsys):
    from infd_solve.cli import layout

    clip_dir = save_tiny_clip(tmp_path / "clip")
    path = tmp_path / "l.json"
    path.write_text(json.dumps({"canvas": 32, "items": [{"type": "clip", "prompt": "clouds \udc80"}]}))
    status = layout.main([str(path), "--clip", str(clip_dir), "-o", str(tmp_path / "out.png")])
    assert status == 2 and "items[0].prompt: is not valid text" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
