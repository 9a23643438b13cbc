"""Guided sampling with an INFD model: constraints (what is measured) + prior (the model) + search (a sampler).

:class:`Solver` turns a list of :class:`Constraint` objects into one objective on the predicted clean latent
(decode it to the field, let each active constraint render only its own box at its own size, sum the weighted
per-sample losses), hands it to a sampler family (:mod:`infd_solve.samplers`), refines the result for the
observations, and makes it explain every observation (:mod:`infd_solve.consistency`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Callable, Sequence

import torch

from . import checks
from .consistency import correct
from .constraints.base import Constraint
from .models.infd import INFDModel
from .options import AUTO, SOLVER_OPTIONS, OptionError, resolve
from .rendering import render_box
from .result import Report, Result  # noqa: F401  (Result is part of the solver's API)
from .samplers import Problem, get_sampler, refine_latent
from .samplers.ddim import ddim_timesteps, initial_noise

DEFAULT_REFINE_STEPS = 100
FALLBACK_SAMPLER = "dps"  # "auto" when the constraints prefer different families


class GuidanceWarning(RuntimeWarning):
    """Some constraint never guided some sample (its loss or gradient was never finite)."""


def sample_keys(generator, batch_size: int) -> list[int]:
    """One integer per sample for :meth:`Constraint.begin_step`: its generator's seed (``seed + i`` when the
    solve was given ``seed``), else its index."""
    if isinstance(generator, torch.Generator):
        return [generator.initial_seed() + i for i in range(batch_size)]
    if generator is not None:
        return [g.initial_seed() for g in generator]
    return list(range(batch_size))


def _latent_region(c: Constraint, shape, device, dtype):
    r = c.latent_region(tuple(shape))
    return None if r is None else r.to(device, dtype).clamp(0, 1)


def guided_region(constraints: Sequence[Constraint], shape: tuple[int, int], device=None, dtype=None):
    """``(i, t) -> mask or None``: the union of the latent regions of the constraints active at ``t``
    (``None`` where one of them may change everything)."""
    regions = {c.name: _latent_region(c, shape, device, dtype) for c in constraints}
    if all(r is None for r in regions.values()):
        return None
    unions = {}  # per set of active constraints: their union, made once

    def region(i: int, t: int):
        active = tuple(c.name for c in constraints if c.is_active(t))
        if active not in unions:
            masks = [regions[name] for name in active]
            unions[active] = None if not masks or any(r is None for r in masks) else torch.stack(masks).amax(0)
        return unions[active]

    return region


def kept_region(constraints: Sequence[Constraint], shape: tuple[int, int], device=None, dtype=None):
    """The union of all constraints' latent regions (``keep_outside``'s mask), or ``None`` when there are
    none or one of them may change everything."""
    regions = [_latent_region(c, shape, device, dtype) for c in constraints]
    if not regions or any(r is None for r in regions):
        return None
    return torch.stack(regions).amax(0)


def guidance_bytes(model: INFDModel, constraints: Sequence[Constraint]) -> int:
    """A rough upper estimate of the memory one sample needs in a guided step: the decoder's activations at
    the field's size and, per constraint, the renderer's over its grid (with the receptive halo), kept for
    the backward pass. Meant to refuse impossible requests early, not to plan memory to the byte."""
    renderer = model.config.renderer
    c, h, w = model.config.z_shape
    field = model.config.decoder.field_channels * (h * model.config.decoder.downsampling) * \
        (w * model.config.decoder.downsampling)
    layers = 4 * (renderer.num_res_blocks + 1)  # maps the backward pass keeps per conv layer, generously
    halo = 2 * getattr(model.renderer, "receptive_radius", 0)
    pixels = sum((ch + halo) * (cw + halo) for ch, cw in (con.size for con in constraints))
    return 4 * (20 * field + layers * renderer.hidden_channels * pixels) + 2**20


def option_names(sampler: str = AUTO) -> list[str]:
    """The names of every option of a solve with the sampler family ``sampler`` (``"auto"``: dps's)."""
    return sorted(SOLVER_OPTIONS | get_sampler(FALLBACK_SAMPLER if sampler == AUTO else sampler).options)


def chosen_sampler(constraints: Sequence = (), given: dict | None = None) -> str:
    """The family of a solve whose ``sampler`` is ``"auto"``: the one every constraint prefers
    (``Constraint.default_sampler``), else dps; dps also when an option ``given`` is not that family's."""
    preferred = {c.default_sampler for c in constraints}
    name = preferred.pop() if len(preferred) == 1 else FALLBACK_SAMPLER
    if set(given or ()) - set(SOLVER_OPTIONS | get_sampler(name).options):
        return FALLBACK_SAMPLER
    return name


def solver_options(model: INFDModel | None = None, constraints: Sequence | None = None, **given) -> dict:
    """Every option of a solve (:mod:`infd_solve.options`: the solver's and the chosen sampler's), checked,
    with defaults, and ``timesteps`` (``steps`` checked against ``model``'s noise schedule).
    :class:`OptionError` names the option.

    ``sampler="auto"`` (the default) becomes the family ``constraints`` prefer (:func:`chosen_sampler`), and
    ``steps`` defaults to that family's. While the constraints are not known (``None``), the options are
    checked as dps's, and ``sampler`` stays ``"auto"`` (``steps`` and ``timesteps`` ``None`` unless given).
    """
    name = SOLVER_OPTIONS["sampler"].parse(given.get("sampler", AUTO))
    decided = name != AUTO or constraints is not None
    family = get_sampler(chosen_sampler(constraints or (), given) if name == AUTO else name)
    options = resolve(given, family.options)
    if decided:
        options["sampler"] = family.name
        if options["steps"] is None:
            options["steps"] = family.default_steps
    options["timesteps"] = None
    if options["steps"] is not None:
        train_steps = model.scheduler.config.num_train_timesteps if model is not None else 1000
        try:
            options["timesteps"] = ddim_timesteps(options["steps"], train_steps)
        except ValueError as e:
            raise OptionError("steps", str(e).removeprefix("steps=")) from None
    return options


class Solver:
    """Guided sampling of an INFD model under constraints.

    Options (keyword-only; names, defaults, checks and help: :mod:`infd_solve.options` and the sampler
    family's own, :func:`infd_solve.samplers.register_sampler`): ``sampler`` (``"dps"``, ``"mpgd"``, ``"daps"``,
    ``"resample"`` or any registered family; by default ``"auto"``, each solve the family its constraints
    prefer, :func:`chosen_sampler`), ``steps`` (default: the family's), the family's options (e.g.
    ``guidance_scale``, ``eta``), ``refine_steps`` / ``refine_lr`` / ``refine_anchor`` (after sampling, Adam on
    the final latent against the constraints that opt in, ``Constraint.refine``; the others are held where
    they were), ``keep_outside`` (the latent outside every constraint's region follows the unguided sample
    from the same noise) and ``consistency`` (the result explains every observation, falling back towards
    the classical answer where the model cannot, :mod:`infd_solve.consistency`).

    For speed and memory (a GPU's): ``autocast`` (``torch.bfloat16`` or ``torch.float16``) runs the denoiser,
    decoder, renderer and losses of each guided step in that precision, the update in the model's own;
    ``checkpoint_decoder`` recomputes the decoder's activations in the backward pass instead of keeping them;
    ``compile`` wraps the denoiser in ``torch.compile`` (``True``: inductor, or a backend's name).
    """

    def __init__(self, model: INFDModel, *, progress: bool = True, autocast: torch.dtype | None = None,
                 checkpoint_decoder: bool = False, compile: bool | str = False, **options):
        if not isinstance(model, INFDModel):
            raise ValueError(f"model must be an INFDModel (from infd_solve.load_model), got {type(model).__name__}")
        if model.unet is None:
            raise ValueError("model has no diffusion denoiser (an autoencoder only); it cannot sample")
        self.given = dict(options)  # a solve resolves "auto" from these and its constraints (solver_options)
        self.options = solver_options(model, **options)
        self.options.pop("timesteps")
        self.model, self.progress = model, bool(progress)
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")
        self.autocast, self.checkpoint_decoder = autocast, checks.boolean(checkpoint_decoder, "checkpoint_decoder")
        self.denoise = model.denoise
        if compile:
            backend = compile if isinstance(compile, str) else "inductor"
            self.denoise = torch.compile(model.denoise, backend=backend, dynamic=False)

    def __getattr__(self, name):  # solver.steps, solver.guidance_scale, ...: the options
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _precision(self):
        """The guided step's autocast context (the updates themselves stay in the model's dtype)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast)

    def objective(self, constraints: Sequence[Constraint], patches: Callable | None = None,
                  keys: Sequence[int] | None = None):
        """``(z0_hat, i, t, normalize) -> (per-sample loss, {name: per-sample loss})`` for the samplers: the sum
        of each active constraint's weighted loss (its square root with ``normalize``, DPS's normalization), and
        each one's own loss (unweighted, differentiable).

        ``patches(phi, constraints)`` gives each active constraint its patch; by default each renders its own
        box at its own grid (benchmarks pass other ways, e.g. cropping one render of the whole canvas).
        ``keys``: one integer per sample (its seed, default its index) for :meth:`Constraint.begin_step`."""
        # boxes and grids were checked when the constraints were made: render without checks (each check of
        # a tensor's values waits for the device)
        renderer = self.model.renderer
        patches = patches or (lambda phi, active: [render_box(renderer, phi, c.box, c.size) for c in active])

        def evaluate(z0: torch.Tensor, i: int, t: int, normalize: bool = True):
            active = [c for c in constraints if c.is_active(t)]
            total = z0.new_zeros(z0.shape[0])
            if not active:
                return total, {}
            for c in active:
                c.begin_step(i, t, list(keys) if keys is not None else list(range(z0.shape[0])))
            terms = {}
            with self._precision():
                phi = self.model.decode_unchecked(self.model.unscale(z0), self.checkpoint_decoder)
                for c, patch in zip(active, patches(phi, active)):
                    loss = c.loss(patch).to(total.dtype)
                    terms[c.name] = loss  # with its graph: the refinement holds other constraints by these
                    total = total + c.weight * (loss.clamp_min(0).add(1e-12).sqrt() if normalize else loss)
            return total, terms

        return evaluate

    def solve(self, constraints: Sequence[Constraint], batch_size: int = 1, seed: int | None = None,
              generator=None, noise: torch.Tensor | None = None,
              callback: Callable[[dict], None] | None = None) -> Result:
        """Sample ``batch_size`` images under ``constraints``.

        Reproducible: ``seed`` gives sample i its own generator seeded ``seed + i`` (initial noise and every
        step's noise), so a sample is the same whatever its batch. Or pass ``generator`` (one per sample) and
        ``noise``. ``callback`` sees every step of the sampler (``phase="sample"``) and of the refinement
        (``phase="refine"``).
        """
        constraints, batch_size, seed, options = self._checked(constraints, batch_size, seed)
        model, sampler, timesteps = self.model, get_sampler(options["sampler"]), options["timesteps"]
        # the model decides device and dtype; every constraint follows it once, not on every step
        constraints = [c.to(model.device, model.dtype) for c in constraints]
        if generator is None and seed is not None:
            generator = [torch.Generator().manual_seed(seed + i) for i in range(batch_size)]
        keys = sample_keys(generator, batch_size)
        x = initial_noise((batch_size, *model.config.z_shape), generator, noise, model.device, model.dtype)
        history, record = self._history(constraints, callback)
        history |= {"sampler": sampler.name, "steps": options["steps"]}
        z = sampler.function(self._problem(constraints, generator, keys, timesteps), x,
                             **{name: options[name] for name in sampler.options}, callback=record,
                             progress=self.progress)
        sampled = model.unscale(z.detach())
        if options["refine_steps"]:
            z = self._refine(z, constraints, keys, options["refine_steps"], record)
        return self._result(model.unscale(z.detach()), sampled, constraints, history)

    def _checked(self, constraints, batch_size, seed) -> tuple[list[Constraint], int, int | None, dict]:
        """The arguments of :meth:`solve`, checked before any work (plain Python numbers); and the solve's
        options (its sampler family, steps and refinement steps decided)."""
        if isinstance(constraints, Constraint) or not isinstance(constraints, Sequence) or isinstance(constraints, str):
            raise ValueError(f"constraints must be a list of Constraint objects (wrap a single one in a list), "
                             f"got {type(constraints).__name__}")
        constraints = list(constraints)
        for c in constraints:
            if not isinstance(c, Constraint):
                raise ValueError(f"constraints must be Constraint objects, got {type(c).__name__}")
        batch_size = checks.integer(batch_size, "batch_size", 1)
        if seed is not None:  # sample i uses seed + i, and torch seeds are 64-bit
            seed = checks.integer(seed, "seed", 0, 2**64 - batch_size)
        names = [c.name for c in constraints]
        if len(set(names)) != len(names):
            raise ValueError(f"constraint names must be unique (history is keyed by them), got {names}")
        options = solver_options(self.model, constraints, **self.given)
        ts = options["timesteps"]
        for c in constraints:
            if not any(c.is_active(t) for t in ts):
                shown = ", ".join(map(str, ts if len(ts) <= 3 else [*ts[:2], "...", ts[-1]]))
                raise ValueError(f"constraint {c.name!r} is active for t in {list(c.active)}, but none of the "
                                 f"{len(ts)} sampling timesteps ({shown}) falls in it, so it would never guide; "
                                 "widen its window or take more steps")
            if c.batch not in (1, batch_size):  # observations of several images guide one sample each
                raise ValueError(f"constraint {c.name!r} holds {c.batch} observations but batch_size={batch_size}; "
                                 f"pass batch_size={c.batch}, or one observation")
        self._check_memory(constraints, batch_size)
        return constraints, batch_size, seed, options | {"refine_steps": self._refine_steps(constraints)}

    def _refine_steps(self, constraints: list[Constraint]) -> int:
        refined, steps = any(c.refine for c in constraints), self.options["refine_steps"]
        if steps is None:
            return DEFAULT_REFINE_STEPS if refined else 0
        if steps and not refined:
            raise OptionError("refine_steps", f"{steps} but no constraint opts into refinement (Constraint.refine); "
                              "pass refine=True to the constraints to fit, or refine_steps=0")
        return steps

    def _problem(self, constraints: list[Constraint], generator, keys, timesteps) -> Problem:
        model, shape = self.model, self.model.config.z_shape[1:]

        def denoise(x_t, t):
            with self._precision():
                return self.denoise(x_t, t).to(x_t.dtype)

        keep = kept_region(constraints, shape, model.device, model.dtype) if self.options["keep_outside"] else None
        return Problem(denoise, model.alphas_cumprod, timesteps, self.objective(constraints, keys=keys),
                       generator, guided_region(constraints, shape, model.device, model.dtype), keep)

    def _refine(self, z, constraints, keys, steps: int, record) -> torch.Tensor:
        """Refinement for the constraints that opt in; the others are held at least as good as sampled."""
        held = [c for c in constraints if not c.refine]
        hold = self.objective(held, keys=keys) if held else None
        return refine_latent(z, self.objective([c for c in constraints if c.refine], keys=keys), steps,
                             self.options["refine_lr"], record, self.progress, anchor=self.options["refine_anchor"],
                             hold=hold, hold_weight=self.options["refine_hold"])

    def _history(self, constraints, callback):
        """An empty history and the callback that fills it (then calls ``callback``)."""
        history = {"loss": {c.name: [] for c in constraints}, "timesteps": [], "step_seconds": [], "skipped": [],
                   "phase": []}
        clock = [time.perf_counter()]

        def record(state):
            now = time.perf_counter()
            history["step_seconds"].append(now - clock[0])
            clock[0] = now
            history["timesteps"].append(state["t"])
            history["phase"].append(state["phase"])
            for name in history["loss"]:
                value = state["terms"].get(name)
                history["loss"][name].append(None if value is None else value.detach())
            history["skipped"].append(state["skipped"])  # kept on the device: no host sync per step
            if callback is not None:
                callback(state)

        return history, record

    def _result(self, z, sampled, constraints, history) -> Result:
        """The result, with its history brought to the host once, its corrections, and a warning if some
        constraint never guided."""
        model = self.model
        with torch.no_grad():
            phi = model.decode(z)
        history["sampling_steps"] = history["phase"].count("sample")
        history["loss"] = {name: [None if v is None else v.cpu() for v in values]
                           for name, values in history["loss"].items()}
        history["skipped"] = [s.nonzero().flatten().tolist() for s in history["skipped"]]
        corrections = correct(model, phi, constraints) if self.options["consistency"] else []
        result = Result(model, z, phi, constraints, history, corrections, sampled)
        unguided = {name: samples for name, samples in result.never_guided().items() if samples}
        if unguided:
            warnings.warn("guidance never happened for " + "; ".join(
                f"{name!r} (samples {samples})" for name, samples in unguided.items()) + ": its loss or gradient was "
                "never finite; check its weight and data (Result.never_guided())", GuidanceWarning, stacklevel=3)
        return result

    def _check_memory(self, constraints: Sequence[Constraint], batch_size: int) -> None:
        """Refuse, before any work, a guided step that cannot fit in the device's memory."""
        from .profiling import available_memory

        per_sample = guidance_bytes(self.model, constraints)
        available = available_memory(self.model.device)
        if available is not None and batch_size * per_sample > available:
            raise ValueError(
                f"batch_size={batch_size} with these constraints needs about {batch_size * per_sample / 2**30:.1f} GB "
                f"for one guided step ({per_sample / 2**20:.0f} MB per sample), but {available / 2**30:.1f} GB are "
                f"available on {self.model.device}; use a smaller batch or smaller constraint grids")
