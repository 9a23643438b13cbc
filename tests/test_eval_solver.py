"""``recipes/eval_solver.py`` runs through the library's current options (it once passed options the Solver no
longer had, and crashed on its first task)."""

import json

from .helpers import load_recipe


def test_eval_solver_scores_inpainting_on_the_shipped_model(tmp_path):
    table = load_recipe("eval_solver").main(["--tasks", "inpainting", "--scenes", "1", "--refine-steps", "5",
                                             "--steps", "3", "--threads", "1", "--out", str(tmp_path / "eval")])
    assert table["inpainting known-region PSNR (dB)"] >= 45  # the known pixels are kept (data consistency)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["sampler"] == "auto" and (tmp_path / "eval.png").is_file()
