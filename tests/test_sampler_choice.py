"""``sampler="auto"`` (the default): each solve takes the sampler family its constraints prefer
(``Constraint.default_sampler``) at that family's default steps, which spend the same denoiser evaluations
whatever the family."""

import pytest
import torch

from infd_solve import Solver
from infd_solve.constraints import BlurObservation, ColorMatch, LowResObservation, MaskedObservation
from infd_solve.options import DEFAULT_STEPS
from infd_solve.samplers import SAMPLERS
from infd_solve.solver import chosen_sampler, solver_options

from .helpers import tiny_model

BLUR = {"type": "gaussian", "size": 5, "sigma": 1.0}


def _image(seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Sketch(ColorMatch):
    """A constraint a user writes, preferring a family of the library's."""

    default_sampler = "mpgd"


def test_each_kind_of_constraint_names_its_family():
    blur, low = BlurObservation(_image(0), BLUR), LowResObservation(_image(1, 8))
    hole = MaskedObservation(_image(2), torch.rand(16, 16, generator=torch.Generator().manual_seed(3)).round())
    color = ColorMatch("#ffffff", (0, 0, 0.5, 0.5))
    blurs = [blur, BlurObservation(_image(4), BLUR, name="second")]
    assert chosen_sampler([blur]) == chosen_sampler(blurs) == "daps"
    assert chosen_sampler([hole]) == chosen_sampler([low]) == chosen_sampler([color]) == chosen_sampler([]) == "dps"
    assert chosen_sampler([blur, color]) == chosen_sampler([blur, low]) == "dps"  # they disagree: the fallback
    assert chosen_sampler([blur], {"eta": 0.0}) == "dps"  # an option only dps takes keeps dps
    assert chosen_sampler([blur], {"guidance_scale": 2.0, "refine_steps": 3}) == "daps"  # options daps takes too
    assert chosen_sampler([Sketch("#000000")]) == "mpgd"


def test_every_default_spends_the_same_denoiser_evaluations():
    blur = BlurObservation(_image(0), BLUR)
    options = solver_options(constraints=[blur])
    assert (options["sampler"], options["steps"], len(options["timesteps"])) == ("daps", DEFAULT_STEPS // 2,
                                                                                 DEFAULT_STEPS // 2)
    assert SAMPLERS["daps"].default_steps * SAMPLERS["daps"].options["ode_steps"].default == DEFAULT_STEPS
    assert {name: SAMPLERS[name].default_steps for name in ("dps", "mpgd", "resample")} == \
        dict.fromkeys(("dps", "mpgd", "resample"), DEFAULT_STEPS)
    assert solver_options(constraints=[blur], steps=7)["steps"] == 7  # given steps are the family's steps
    assert solver_options(constraints=[blur], sampler="dps")["steps"] == DEFAULT_STEPS
    undecided = solver_options()  # no constraints yet: checked as dps's options, the family left open
    assert (undecided["sampler"], undecided["steps"], undecided["timesteps"]) == ("auto", None, None)


@pytest.mark.parametrize("given, family", [({}, "daps"), ({"sampler": "dps"}, "dps"), ({"eta": 0.5}, "dps")])
def test_a_solve_runs_the_chosen_family_within_the_budget(given, family):
    model = tiny_model(normalize=False)
    calls = []
    denoise = model.denoise
    model.denoise = lambda x, t: (calls.append(len(x)), denoise(x, t))[1]  # counts the denoiser's evaluations
    solver = Solver(model, progress=False, refine_steps=0, **given)
    result = solver.solve([BlurObservation(_image(0), BLUR)], seed=0)
    assert (result.history["sampler"], solver.sampler) == (family, given.get("sampler", "auto"))
    assert result.history["sampling_steps"] == result.history["steps"] == SAMPLERS[family].default_steps
    # DAPS's last levels may need fewer ODE steps than its ode_steps (a level at t <= 1 has one clean estimate)
    assert DEFAULT_STEPS - 2 <= len(calls) <= DEFAULT_STEPS
    assert torch.isfinite(result.latent).all()
