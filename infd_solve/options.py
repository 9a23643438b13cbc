"""Solver options: one table of names, defaults, checks and help text.

:class:`~infd_solve.Solver`, layouts (top-level fields), batch jobs (job fields) and the commands (flags) all
read these :class:`Option` objects: the solver's own (:data:`SOLVER_OPTIONS`) and those of the chosen
sampler family (declared where the family is registered, :func:`infd_solve.samplers.register_sampler`).
A bad value raises :class:`OptionError`, which carries the option's name as data (``error.field``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import checks

DEFAULT_STEPS = 50  # denoiser evaluations of a solve or an unguided sample, whatever the sampler family
AUTO = "auto"  # the default family: the one the solve's constraints prefer (Constraint.default_sampler)


class OptionError(ValueError):
    """A bad option: ``field`` is the option's name, ``reason`` what is wrong with it."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class Option:
    """A named option with its default, its check (``check(value, name)`` returns the normalized value or
    raises ``ValueError``) and one line of help."""

    name: str
    default: Any
    check: Callable[[Any, str], Any]
    help: str

    def parse(self, value):
        """The checked value; :class:`OptionError` naming this option if it is bad."""
        try:
            return self.check(value, self.name)
        except OptionError:
            raise
        except ValueError as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OptionError(self.name, message[len(self.name):].lstrip(" :") if message.startswith(self.name)
                              else message) from None


def optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """``check`` that also accepts ``None``."""
    return lambda value, name: None if value is None else check(value, name)


def positive(value, name):
    return checks.number(value, name, 0.0, strict=True)


def non_negative(value, name):
    return checks.number(value, name, 0.0, 1e6)


def fraction(value, name):
    return checks.number(value, name, 0.0, 1.0)


def count(value, name):
    return checks.integer(value, name, 1)


def _sampler_name(value, name):
    if value == AUTO:
        return AUTO
    from .samplers import get_sampler

    return get_sampler(value).name


SOLVER_OPTIONS: dict[str, Option] = {option.name: option for option in (
    Option("steps", None, optional(count), "denoising steps (timesteps visited, official ddimN respacing; default: "
           f"the sampler family's, {DEFAULT_STEPS} denoiser evaluations)"),
    Option("sampler", AUTO, _sampler_name, "sampler family (infd_solve.samplers: dps, mpgd, daps, resample, ...; "
           "auto: the one the constraints prefer, else dps)"),
    Option("refine_steps", None, optional(lambda v, n: checks.integer(v, n, 0, 100_000)),
           "data-consistency optimization steps on the final latent (default: 100 when a constraint opts in)"),
    Option("refine_lr", 0.05, positive, "the refinement's Adam learning rate"),
    Option("refine_anchor", 0.03, non_negative, "the refinement's pull towards the sampled latent"),
    Option("refine_hold", 10.0, non_negative,
           "the refinement's push back on a constraint it does not fit (e.g. a CLIP box) once worse than sampled"),
    Option("keep_outside", False, checks.boolean, "outside every region, keep the unguided sample from the same noise"),
    Option("consistency", True, checks.boolean, "make the result explain every observation (data consistency)"),
)}


def resolve(given: dict[str, Any], sampler_options: dict[str, Option]) -> dict[str, Any]:
    """Every option (the solver's and the sampler's) checked, defaults filled in; :class:`OptionError` for an
    unknown or bad one."""
    known = SOLVER_OPTIONS | sampler_options
    for name in given:
        if name not in known:
            raise OptionError(name, f"unknown option; allowed: {', '.join(sorted(known))}")
    return {name: option.parse(given[name]) if name in given else option.default for name, option in known.items()}
