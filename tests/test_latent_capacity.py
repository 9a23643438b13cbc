"""The linear yardstick of recipes/eval_latent_capacity.py: the code's quality rises with its channels, and a
code with every component of a patch is lossless."""

import json

from .helpers import load_recipe


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
