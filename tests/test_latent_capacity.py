"""The linear yardstick of recipes/eval_latent_capacity.py: the code's quality rises with its channels, and a
code with every component of a patch is lossless."""

import json

import pytest
import torch

from infd_solve import INFDModel
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.models.patch_code import fit_patch_code, set_patch_code

from .helpers import load_recipe
from .test_patch_code import patch_code_config


def test_linear_codes_rise_with_their_channels_and_lose_nothing_with_all_of_them(tmp_path):
    out = tmp_path / "capacity.json"
    table = load_recipe("eval_latent_capacity").main(
        ["--input-size", "32", "--patches", "2", "--channels", "3", "6", "12", "--train-scenes", "6",
         "--scenes", "3", "--out", str(out)])
    codes = {c["channels"]: c for c in table["codes"]}
    assert [c["latent"] for c in table["codes"]] == ["3x16x16", "6x16x16", "12x16x16"]
    assert codes[3]["PSNR @32"] < codes[6]["PSNR @32"] < codes[12]["PSNR @32"]
    assert codes[12]["PSNR @32"] > 80  # 12 = 3 x 2 x 2: every component, the input itself
    # the lossless code upsamples exactly like bicubic from its input size
    assert abs(codes[12]["PSNR @256"] - table["bicubic from 32 PSNR @256 (dB)"]) < 0.01
    assert json.loads(out.read_text())["codes"] == table["codes"]


def test_trained_patch_codes_are_measured_by_their_linear_decode(tmp_path, one_thread):
    """``--models``: a code with every component reconstructs its input exactly, so at 256 it is bicubic from
    its input size; a lossy block code's decode is the yardstick's PCA of the same patches, and it draws its
    cells as blocks."""
    recipe = load_recipe("eval_latent_capacity")
    size, patch = 16, 4
    seeds = [TEST_SEED_OFFSET + 10_000 + i for i in range(3)]
    train = torch.cat([scene_tensor(i, size) for i in range(12)])
    test, test_256 = (torch.cat([scene_tensor(s, n) for s in seeds]) for n in (size, 256))
    paths = []
    for channels in (48, 8):
        model = INFDModel(patch_code_config(channels))
        set_patch_code(model, fit_patch_code(train, patch, channels))
        paths.append(str(model.save(tmp_path / f"code{channels}")))
    table = recipe.main(["--input-size", str(size), "--patches", "--scenes", "3", "--models", *paths,
                         "--out", str(tmp_path / "codes.json")])
    lossless, lossy = (table["trained codes"][k] for k in paths)
    assert lossless["PSNR @16"] > 80
    assert abs(lossless["PSNR @256"] - table["bicubic from 16 PSNR @256 (dB)"]) < 0.01
    at_input, at_256 = recipe.linear_code_scores(train, test, test_256, patch, [8])[8]
    assert abs(lossy["PSNR @16"] - at_input) < 0.01 and abs(lossy["PSNR @256"] - at_256) < 0.01
    # along x: 4 cells of 256 px, whose borders along y may meet a horizon by chance (the truth's reads 4 there)
    assert lossy["block ratio @1024"][0] > lossless["block ratio @1024"][0] + 1
    assert lossy["block ratio @1024, noisy latent"][0] > lossless["block ratio @1024, noisy latent"][0] + 1


def test_a_missing_model_or_one_without_a_patch_code_is_refused_before_any_work(tmp_path):
    out = tmp_path / "codes.json"
    with pytest.raises(SystemExit, match="'conv_stack' autoencoder has no linear decode"):
        load_recipe("eval_latent_capacity").main(["--patches", "--models", "default", "--out", str(out)])
    with pytest.raises(SystemExit, match=f"--models {tmp_path}/none: no model at"):
        load_recipe("eval_latent_capacity").main(["--patches", "--models", str(tmp_path / "none"), "--out", str(out)])
    assert not out.exists()
