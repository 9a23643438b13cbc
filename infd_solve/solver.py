"""Guided sampling with an INFD model: constraints (what is measured) + prior (the model) + search (the sampler).

The solver turns a list of :class:`Constraint` objects into one objective on the predicted clean latent:
decode it to the field, let each active constraint render only its own box at its own size, and sum the
weighted per-sample losses. :func:`infd_solve.sampling.sample_guided` does the search.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import checks
from .constraints.base import Constraint
from .io import check_output, save_image, write_png
from .metrics import psnr
from .models.infd import INFDModel
from .rendering import FULL_CANVAS, check_box, check_size, render_box
from .sampling import GUIDANCE_MODES, ddim_timesteps, initial_noise, refine_latent, sample_guided


@dataclass
class Result:
    """What :meth:`Solver.solve` returns.

    ``latent`` (B x C x h x w) and ``field`` (decoded, B x C' x H' x W'); ``history``: ``loss`` (constraint name
    -> per-step list of per-sample losses), ``timesteps``, ``step_seconds``, ``skipped`` (per step, the samples
    whose guidance was dropped because a loss or gradient was not finite); the first ``sampling_steps``
    entries are the sampler's, the rest the refinement's.
    """

    model: INFDModel
    latent: torch.Tensor
    field: torch.Tensor
    constraints: list[Constraint]
    history: dict = field(default_factory=dict)

    def render(self, size, box=FULL_CANVAS, tile: int = 256) -> torch.Tensor:
        """Render ``box`` at ``size``; the whole canvas is rendered in tiles (bounded memory)."""
        with torch.no_grad():
            if tuple(check_box(box)) == FULL_CANVAS:
                return self.model.render_image(self.field, size, tile=tile)
            return self.model.render(self.field, size, box)

    def save(self, path: str | Path, size, tile: int = 256, progress: bool = False) -> list[Path]:
        """Write the canvas at ``size`` to ``path`` (atomically; a batch writes ``stem_0.png``, ``stem_1.png``,
        ...). A PNG is rendered and compressed one band of tiles at a time, so memory does not grow with the
        canvas; other formats are rendered whole first. The path is checked before any rendering."""
        path, size = check_output(path), check_size(size)
        paths = [path] if len(self.field) == 1 else \
            [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(len(self.field))]
        for k, out in enumerate(paths):
            field = self.field[k : k + 1]
            if out.suffix.lower() == ".png":
                bands = self.model.render_bands(field, size, tile=tile, progress=progress, uint8=True)
                write_png(out, *size, (band[0].numpy() for _, band in bands))
            else:
                save_image(self.model.render_image(field, size, tile=tile, progress=progress)[0], out)
        return paths

    def report(self) -> dict[str, dict[str, list[float]]]:
        """``{constraint name: {measure: per-sample values}}`` on the result: each constraint's box rendered at
        its size from the final field and scored by :meth:`Constraint.score` (loss, and e.g. PSNR against an
        observation or CLIP similarity); a solved result adds ``guided``: 1 if the constraint guided that
        sample at some step, else 0 (see :meth:`never_guided`)."""
        out, unguided = {}, self.never_guided() if "loss" in self.history else None
        with torch.no_grad():
            for c in self.constraints:
                scores = c.score(self.model.render(self.field, c.score_size, c.box))
                out[c.name] = {k: v.double().cpu().tolist() for k, v in scores.items()}
                if unguided is not None:
                    skipped = unguided.get(c.name, ())
                    out[c.name]["guided"] = [float(i not in skipped) for i in range(len(self.field))]
        return out

    def never_guided(self) -> dict[str, list[int]]:
        """Per constraint, the samples it never guided: at no sampling step was it active with a finite loss
        while that sample's guidance was applied (an infinite weight or a bad observation skips every step)."""
        out = {}
        steps = self.history.get("sampling_steps", len(self.history["timesteps"]))
        batch = len(self.latent)
        for name, values in self.history["loss"].items():
            guided = torch.zeros(batch, dtype=torch.bool)
            for loss, skipped in zip(values[:steps], self.history["skipped"][:steps]):
                if loss is not None:
                    step = torch.isfinite(loss).expand(batch).clone()
                    step[skipped] = False
                    guided |= step
            out[name] = (~guided).nonzero().flatten().tolist()
        return out

    def constraint_gaps(self) -> dict[str, torch.Tensor]:
        """PSNR (dB, per sample) between what each constraint saw (its box rendered alone) and the same pixels
        of the whole canvas rendered on that constraint's pixel lattice (one exact tiled render).

        A local renderer (the default model's) gives ``inf``: the constraint saw exactly the final pixels. A
        renderer that normalizes over its grid (official checkpoints) gives a finite value: the gap.
        """
        gaps = {}
        with torch.no_grad():
            for c in self.constraints:
                left, top, right, bottom = c.box
                h, w = c.size
                canvas = (max(h, round(h / (bottom - top))), max(w, round(w / (right - left))))
                # snap the box to that lattice so both renders use the very same pixel centres
                r0, c0 = min(round(top * canvas[0]), canvas[0] - h), min(round(left * canvas[1]), canvas[1] - w)
                box = (c0 / canvas[1], r0 / canvas[0], (c0 + w) / canvas[1], (r0 + h) / canvas[0])
                alone = self.model.render(self.field, (h, w), box)
                whole = self.model.render_image(self.field, canvas)[..., r0 : r0 + h, c0 : c0 + w]
                gaps[c.name] = psnr(alone, whole)
        return gaps

    def plot_losses(self, path: str | Path) -> Path:
        """Loss per constraint over the steps, as a PNG (:func:`infd_solve.viz.plot_losses`)."""
        from .viz import plot_losses

        return plot_losses(self.history, path)


DEFAULT_REFINE_STEPS = 100
# A guided step's kick grows with the training timesteps it covers, up to those of 50 steps over 1000: at
# fewer steps larger kicks overshoot and diverge (the refinement then closes the smaller total guidance's gap).
MAX_STRIDE = 20


def sample_keys(generator, batch_size: int) -> list[int]:
    """One integer per sample for :meth:`Constraint.begin_step`: its generator's seed (``seed + i`` when the
    solve was given ``seed``), else its index."""
    if isinstance(generator, torch.Generator):
        return [generator.initial_seed() + i for i in range(batch_size)]
    if generator is not None:
        return [g.initial_seed() for g in generator]
    return list(range(batch_size))


def guided_region(constraints: Sequence[Constraint], shape: tuple[int, int], device=None, dtype=None):
    """``(i, t) -> mask or None`` for :func:`sample_guided`: the union of the latent regions of the constraints
    active at ``t`` (``None`` where one of them may change everything)."""
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
    """The union of all constraints' latent regions (the ``keep`` mask of :func:`sample_guided`), or ``None``
    when there are none or one of them may change everything."""
    regions = [_latent_region(c, shape, device, dtype) for c in constraints]
    if not regions or any(r is None for r in regions):
        return None
    return torch.stack(regions).amax(0)


def _latent_region(c: Constraint, shape, device, dtype):
    r = c.latent_region(tuple(shape))
    return None if r is None else r.to(device, dtype).clamp(0, 1)


def guidance_bytes(model: INFDModel, constraints: Sequence[Constraint]) -> int:
    """A rough upper estimate of the memory one sample needs in a guided step: the decoder's activations at
    the field's size and, per constraint, the renderer's over its grid (with the receptive halo), kept for
    the backward pass. Meant to refuse impossible requests early, not to plan memory to the byte."""
    renderer = model.config.renderer
    c, h, w = model.config.z_shape
    field = model.config.decoder.block_out_channels[0] * (h * model.config.decoder.downsampling) * \
        (w * model.config.decoder.downsampling)
    layers = 4 * (renderer.num_res_blocks + 1)  # maps the backward pass keeps per conv layer, generously
    halo = 2 * getattr(model.renderer, "receptive_radius", 0)
    pixels = sum((ch + halo) * (cw + halo) for ch, cw in (con.size for con in constraints))
    return 4 * (20 * field + layers * renderer.hidden_channels * pixels) + 2**20


def check_options(steps=50, eta=1.0, guidance="dps", scale=1.0, normalize=True, max_grad_norm=None,
                  refine_steps=None, refine_lr=0.05, refine_anchor=0.03, keep_outside=False,
                  num_train_timesteps: int = 1000) -> dict:
    """The :class:`Solver` options, checked (``ValueError`` starting with the option's name) and normalized;
    ``timesteps`` added. Layouts check theirs with this too."""
    steps = checks.integer(steps, "steps", 1)
    try:
        timesteps = ddim_timesteps(steps, num_train_timesteps)
    except ValueError as e:
        raise ValueError(f"steps: {e}") from None
    return {
        "steps": steps, "timesteps": timesteps,
        "eta": checks.number(eta, "eta", 0.0, 1.0),  # > 1 makes the DDIM variance negative
        "guidance": checks.choice(guidance, "guidance", GUIDANCE_MODES),
        "scale": checks.number(scale, "scale", 0.0, 1e6),
        "normalize": checks.boolean(normalize, "normalize"),
        "max_grad_norm": None if max_grad_norm is None else checks.number(max_grad_norm, "max_grad_norm",
                                                                          strict=True),
        "refine_steps": None if refine_steps is None else checks.integer(refine_steps, "refine_steps", 0),
        "refine_lr": checks.number(refine_lr, "refine_lr", strict=True),
        "refine_anchor": checks.number(refine_anchor, "refine_anchor", 0.0, 1e6),
        "keep_outside": checks.boolean(keep_outside, "keep_outside"),
    }


class Solver:
    """DPS-style guided sampling of an INFD model under constraints.

    ``guidance``: ``"dps"`` (gradient through the denoiser, Chung et al. 2023) or ``"x0"`` (gradient with
    respect to the predicted clean latent only; cheaper). ``scale``: global step size, multiplied by each
    constraint's ``weight`` (each constraint class's default weight is set for ``scale=1``).
    ``normalize``: DPS's normalization, guiding on the square root of each constraint's loss (its residual
    norm), per sample. ``max_grad_norm``: per-sample clipping of the guidance gradient. ``refine_steps``:
    after sampling, that many Adam steps (learning rate ``refine_lr``) on the final latent against the
    constraints that opt in (``Constraint.refine``: observations do, CLIP boxes do not), for data
    consistency (see :func:`infd_solve.sampling.refine_latent`); ``None`` (default): ``DEFAULT_REFINE_STEPS``
    when some constraint opts in, else none. ``refine_anchor``: the refinement's pull towards the sampled
    latent, which keeps what the observation barely sees (an inpainting hole) from drifting.

    ``keep_outside``: when every constraint has a latent region (:meth:`Constraint.latent_region`; ``ClipBox``
    has one by default), the latent outside their union follows the unguided sample from the same noise
    (blended diffusion, one more denoiser call per step), so a layout leaves what it does not mention as the
    prior drew it; off by default, because the items then fill their boxes less (measured in
    ``pretrained/MODEL_CARD.md``).

    For speed and memory (a GPU's): ``autocast`` (``torch.bfloat16`` or ``torch.float16``) runs the denoiser,
    decoder, renderer and losses of each guided step in that precision, the update in the model's own;
    ``checkpoint_decoder`` recomputes the decoder's activations in the backward pass instead of keeping them
    (less memory per sample); ``compile`` wraps the denoiser in ``torch.compile`` (``True``: inductor, or a
    backend's name).
    """

    def __init__(self, model: INFDModel, steps: int = 50, eta: float = 1.0, guidance: str = "dps",
                 scale: float = 1.0, normalize: bool = True, max_grad_norm: float | None = None,
                 refine_steps: int | None = None, refine_lr: float = 0.05, refine_anchor: float = 0.03,
                 keep_outside: bool = False, progress: bool = True,
                 autocast: torch.dtype | None = None, checkpoint_decoder: bool = False, compile: bool | str = False):
        if not isinstance(model, INFDModel):
            raise ValueError(f"model must be an INFDModel (from infd_solve.load_model), got {type(model).__name__}")
        if model.unet is None:
            raise ValueError("model has no diffusion denoiser (an autoencoder only); it cannot sample")
        options = check_options(steps=steps, eta=eta, guidance=guidance, scale=scale, normalize=normalize,
                                max_grad_norm=max_grad_norm, refine_steps=refine_steps, refine_lr=refine_lr,
                                refine_anchor=refine_anchor, keep_outside=keep_outside,
                                num_train_timesteps=model.scheduler.config.num_train_timesteps)
        self.model, self.progress = model, bool(progress)
        self.timesteps = options.pop("timesteps")
        self.eta, self.guidance, self.scale = options["eta"], options["guidance"], options["scale"]
        self.normalize, self.max_grad_norm = options["normalize"], options["max_grad_norm"]
        self.refine_steps, self.refine_lr = options["refine_steps"], options["refine_lr"]
        self.refine_anchor = options["refine_anchor"]
        self.keep_outside = options["keep_outside"]
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")
        self.autocast, self.checkpoint_decoder = autocast, checks.boolean(checkpoint_decoder, "checkpoint_decoder")
        self.denoise = model.denoise
        if compile:
            backend = compile if isinstance(compile, str) else "inductor"
            self.denoise = torch.compile(model.denoise, backend=backend, dynamic=False)

    def _precision(self):
        """The guided step's autocast context (the DDIM update itself stays in the model's dtype)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast)

    def objective(self, constraints: Sequence[Constraint], patches: Callable | None = None,
                  keys: Sequence[int] | None = None):
        """``(z0_hat, i, t) -> (per-sample loss, {name: per-sample loss})`` for :func:`sample_guided`.

        ``patches(phi, constraints)`` gives each active constraint its patch; by default each renders its own
        box at its own grid (benchmarks pass other ways, e.g. cropping one render of the whole canvas).
        ``keys``: one integer per sample (its seed, default its index) for :meth:`Constraint.begin_step`."""
        # boxes and grids were checked when the constraints were made: render without checks (each check of
        # a tensor's values waits for the device)
        renderer = self.model.renderer
        patches = patches or (lambda phi, active: [render_box(renderer, phi, c.box, c.size) for c in active])

        def evaluate(z0: torch.Tensor, i: int, t: int):
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
                    terms[c.name] = loss.detach()
                    total = total + c.weight * (loss.clamp_min(0).add(1e-12).sqrt() if self.normalize else loss)
            return total, terms

        return evaluate

    def solve(self, constraints: Sequence[Constraint], batch_size: int = 1, seed: int | None = None,
              generator=None, noise: torch.Tensor | None = None,
              callback: Callable[[dict], None] | None = None) -> Result:
        """Sample ``batch_size`` images under ``constraints``.

        Reproducible: ``seed`` gives sample i its own generator seeded ``seed + i`` (initial noise and every
        step's noise), so a sample is the same whatever its batch. Or pass ``generator`` (one per sample) and
        ``noise``.
        """
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
        ts = self.timesteps
        for c in constraints:
            if not any(c.is_active(t) for t in ts):
                shown = ", ".join(map(str, ts if len(ts) <= 3 else [*ts[:2], "...", ts[-1]]))
                raise ValueError(f"constraint {c.name!r} is active for t in {list(c.active)}, but none of the "
                                 f"{len(ts)} sampling timesteps ({shown}) falls in it, so it would never guide; "
                                 "widen its window or take more steps")
        for c in constraints:  # observations of several images guide one sample each
            if c.batch not in (1, batch_size):
                raise ValueError(f"constraint {c.name!r} holds {c.batch} observations but batch_size={batch_size}; "
                                 f"pass batch_size={c.batch}, or one observation")
        self._check_memory(constraints, batch_size)
        refined = [c for c in constraints if c.refine]
        refine_steps = self.refine_steps
        if refine_steps is None:
            refine_steps = DEFAULT_REFINE_STEPS if refined else 0
        elif refine_steps and not refined:
            raise ValueError(f"refine_steps={refine_steps} but no constraint opts into refinement "
                             "(Constraint.refine); pass refine=True to the constraints to fit, or refine_steps=0")
        model = self.model
        # the model decides device and dtype; every constraint follows it once, not on every step
        constraints = [c.to(model.device, model.dtype) for c in constraints]
        if generator is None and seed is not None:
            generator = [torch.Generator().manual_seed(seed + i) for i in range(batch_size)]
        keys = sample_keys(generator, batch_size)
        x = initial_noise((batch_size, *model.config.z_shape), generator, noise, model.device, model.dtype)

        history = {"loss": {c.name: [] for c in constraints}, "timesteps": [], "step_seconds": [], "skipped": [],
                   "sampling_steps": len(self.timesteps)}
        clock = [time.perf_counter()]

        def record(state):
            now = time.perf_counter()
            history["step_seconds"].append(now - clock[0])
            clock[0] = now
            history["timesteps"].append(state["t"])
            for name in history["loss"]:
                history["loss"][name].append(state["terms"].get(name))
            history["skipped"].append(state["skipped"])  # kept on the device: no host sync per step
            if callback is not None:
                callback(state)

        objective = self.objective(constraints, keys=keys)
        shape = model.config.z_shape[1:]

        def denoise(x_t, t):
            with self._precision():
                return self.denoise(x_t, t).to(x_t.dtype)

        keep = kept_region(constraints, shape, model.device, model.dtype) if self.keep_outside else None
        z = sample_guided(denoise, x, model.alphas_cumprod, self.timesteps, objective, self.scale, self.guidance,
                          self.eta, generator, self.max_grad_norm, record, self.progress, MAX_STRIDE,
                          region=guided_region(constraints, shape, model.device, model.dtype), keep=keep)
        if refine_steps:
            z = refine_latent(z, self.objective(refined, keys=keys), refine_steps, self.refine_lr, record,
                              self.progress, anchor=self.refine_anchor)
        z = model.unscale(z.detach())
        with torch.no_grad():
            phi = model.decode(z)
        history["loss"] = {name: [None if v is None else v.cpu() for v in values]
                           for name, values in history["loss"].items()}
        history["skipped"] = [s.nonzero().flatten().tolist() for s in history["skipped"]]
        result = Result(model, z, phi, constraints, history)
        unguided = {name: samples for name, samples in result.never_guided().items() if samples}
        if unguided:
            warnings.warn("guidance never happened for " + "; ".join(
                f"{name!r} (samples {samples})" for name, samples in unguided.items()) + ": its loss or gradient was "
                "never finite; check its weight and data (Result.never_guided())", RuntimeWarning, stacklevel=2)
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
