"""A sampler family is one registered function: defined here, as a user would, it runs through the Solver, a
layout, a batch job and a command (``--import``), and its options are checked from its own declaration."""

import json
import textwrap

import pytest

import infd_solve
from infd_solve import batch
from infd_solve.constraints import ColorMatch
from infd_solve.layout import LayoutError, parse_layout
from infd_solve.options import OptionError
from infd_solve.samplers import SAMPLERS

from .helpers import tiny_model
from .test_programs import error_lines, run_program

PLUGIN = '''
import torch

from infd_solve import checks
from infd_solve.options import Option
from infd_solve.samplers import register_sampler
from infd_solve.samplers.ddim import ddim_step, predict_x0


@register_sampler("{name}", options=[Option("pull", 0.5, lambda v, n: checks.number(v, n, 0.0, 1.0),
                                            "how far each step moves the prediction towards zero")])
def shrink(problem, x, *, pull=0.5, callback=None, progress=True):
    """DDIM whose clean prediction is pulled towards zero (the constraints only watch)."""
    for i, t, a, a_prev, _ in problem.schedule():
        with torch.no_grad():
            eps = problem.denoise(x, t)
        x0 = (1 - pull) * predict_x0(x, eps, a)
        loss, terms = problem.objective(x0, i, t, False)
        x = ddim_step(x0, eps, a, a_prev, 0.0, None)
        if callback is not None:
            callback({{"phase": "sample", "i": i, "t": t, "x": x, "x0": x0, "loss": loss, "terms": terms,
                      "skipped": torch.zeros(len(x), dtype=torch.bool)}})
    return x
'''
exec(PLUGIN.format(name="test-shrink"))  # noqa: S102  (defines and registers the family in this process)


@pytest.fixture(scope="module")
def model():
    return tiny_model(normalize=False)


def test_the_family_runs_through_the_solver(model):
    color = ColorMatch("#ffffff", (0, 0, 0.5, 1))
    result = infd_solve.Solver(model, sampler="test-shrink", pull=1.0, steps=4, progress=False).solve([color], seed=0)
    assert result.history["phase"] == ["sample"] * 4 and result.latent.abs().max() == 0  # pulled all the way
    assert SAMPLERS["test-shrink"].summary.startswith("DDIM whose clean prediction")
    with pytest.raises(OptionError) as caught:
        infd_solve.Solver(model, sampler="test-shrink", pull=2.0)
    assert caught.value.field == "pull" and "<= 1" in caught.value.reason
    with pytest.raises(OptionError, match="guidance_scale: unknown option"):
        infd_solve.Solver(model, sampler="test-shrink", guidance_scale=1.0)  # dps's option, not this family's


def test_the_family_runs_through_a_layout_and_a_batch_job(model, tmp_path):
    layout = {"canvas": 16, "steps": 2, "sampler": "test-shrink", "pull": 0.25,
              "items": [{"type": "color", "color": "#ffffff"}]}
    settings, _ = parse_layout(layout)
    assert settings.sampler == "test-shrink" and settings.pull == 0.25
    with pytest.raises(LayoutError, match=r"^pull: must be a finite number"):
        parse_layout(layout | {"pull": -1})
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"id": "shrunk", "layout": layout}) + "\n")
    jobs = batch.read_jobs(tmp_path / "jobs.jsonl")
    assert batch.run_jobs(jobs, tmp_path / "out", batch.Runner(model), progress=False)["done"] == 1
    record = json.loads((tmp_path / "out" / "jobs" / "shrunk" / "record.json").read_text())
    assert record["status"] == "done" and record["settings"]["sampler"] == "test-shrink"


@pytest.mark.slow
def test_the_family_runs_through_a_command_with_import(model, tmp_path):
    (tmp_path / "shrink_sampler.py").write_text(textwrap.dedent(PLUGIN.format(name="shrink")))
    model.save(tmp_path / "model")
    layout = {"canvas": 16, "steps": 2, "items": [{"type": "color", "color": "#ffffff"}]}
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    common = ["layout.json", "--model", "model", "--import", "shrink_sampler.py", "--no-progress", "-o", "out.png"]
    done = run_program("infd-layout", *common, "--sampler", "shrink", "--option", "pull=0.75", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "steps of shrink" in done.stdout or "(shrink)" in done.stdout
    bad = run_program("infd-layout", *common, "--sampler", "shrink", "--option", "pull=3", cwd=tmp_path)
    assert bad.returncode == 2 and error_lines(bad.stderr, "infd-layout") == [
        "infd-layout: error: --option pull: must be a finite number >= 0 and <= 1, got 3"]
