"""Running jobs: a job built into solver settings and constraints, solved (or sampled, or answered
classically), its outputs and record written; every job checked first, this process's share run (the format
and the rules: :mod:`infd_solve.batch`)."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .jobs import Job, _check_canvas, _option_fields, _path
from .processes import Processes, split_jobs
from .records import RECORD, _write_json, is_finished, job_dir
from .scoring import _metrics, _resized, _score_image
from .simulate import _hole_mask, _simulate


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Prepared:
    """A job built: solver settings and constraints (via :func:`parse_layout`), and for tasks the truth and
    what is shown as the observation."""

    settings: Any
    constraints: list
    truth: torch.Tensor | None = None
    observation: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    details: dict | None = None


class Runner:
    """Runs jobs on one model: ``clip`` (a name or path, loaded on first use by a layout that needs one, or
    a loaded model), ``model_name`` (how the model is named in fingerprints and records)."""

    def __init__(self, model, clip="default", model_name: str = "model", rank: int = 0, world_size: int = 1):
        self.model, self.clip_source, self.model_name = model, clip, str(model_name)
        self.rank, self.world_size = rank, world_size
        self._clip = clip if hasattr(clip, "encode_text") else None

    @property
    def clip(self):
        if self._clip is None:
            from ..clip import load_clip

            self._clip = load_clip(self.clip_source, device=self.model.device)
        return self._clip

    def fingerprint(self, job: Job) -> str:
        """A job's identity for resuming: its line as written, the model and the CLIP."""
        clip = self.clip_source if isinstance(self.clip_source, (str, Path)) else type(self.clip_source).__name__
        text = json.dumps({"job": job.spec, "model": self.model_name, "clip": str(clip)}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------------------------ building
    def _needs_clip(self, layout: dict) -> bool:
        import inspect

        from ..constraints.base import REGISTRY

        items = layout.get("items")
        kinds = {item.get("type") for item in items if isinstance(item, dict)} if isinstance(items, list) else set()
        return any(k in REGISTRY and "clip" in inspect.signature(REGISTRY[k]).parameters for k in kinds
                   if isinstance(k, str))

    def prepare(self, job: Job, quiet: bool = True) -> Prepared:
        """Build ``job``: :class:`JobError` naming its line (and field) when it cannot be. ``quiet``: no
        conversion notes (:func:`validate_jobs` shows them once)."""
        from ..layout import LayoutError

        try:
            with warnings.catch_warnings():
                if quiet:
                    warnings.simplefilter("ignore")
                return self._prepare(job)
        except LayoutError as e:
            message = str(e).splitlines()[0]
            if job.kind == "task":  # the task's one item is the job itself: "items[0].kernel:" -> "kernel:"
                message = re.sub(r"^items\[0\](\.| \(\w+\): )", "", message)
            raise job.error(message) from None
        except (ValueError, OSError) as e:
            raise job.error(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def _prepare(self, job: Job) -> Prepared:
        from ..layout import parse_layout, read_layout

        spec = job.spec
        overrides = {k: spec[k] for k in ("seed", "canvas", "batch_size", *_option_fields(spec)) if k in spec}
        if job.kind == "layout":
            if isinstance(spec["layout"], dict):
                layout, base = dict(spec["layout"]), job.base_dir
            else:
                path = _path(spec["layout"], "layout", job.base_dir)
                layout, base = read_layout(path), path.parent
            layout |= overrides
            clip = self.clip if self._needs_clip(layout) else self.clip_source
            settings, constraints = parse_layout(layout, clip=clip, base_dir=base, device=self.model.device)
            return Prepared(settings, constraints)

        from ..io import load_image

        source = "truth" if "truth" in spec else "image"
        path = _path(spec[source], source, job.base_dir)
        image = load_image(path, source)
        if image.shape[0] != 1:
            raise ValueError(f"{source}: one image per job, got {image.shape[0]}")
        h, w = image.shape[-2:]
        if h != w:
            raise ValueError(f"{source} is {h}x{w}, but the canvas of this model is square; crop or pad it")
        truth, details, mask = (image, {}, None) if source == "truth" else (None, {}, None)
        sigma = spec.get("noise_sigma", 0.0)
        if truth is not None:
            observed, mask, details = _simulate(job, truth)
        else:
            observed = image
            if job.task == "inpaint":
                from ..io import load_mask

                mask = _hole_mask(spec["hole"], (h, w)) if "hole" in spec else load_mask(
                    _path(spec["mask"], "mask", job.base_dir), "mask")
        if job.task == "sr":
            factor = spec.get("factor", 4)
            item = {"type": "lowres", "image": observed, "noise_sigma": sigma, "operator": spec.get("operator", "area")}
            default_size = (h, w) if truth is not None else (h * factor, w * factor)
        elif job.task == "inpaint":
            item = {"type": "observation", "image": observed, "mask": mask}
            default_size = (h, w)
        else:
            kernel = spec["kernel"]
            kernel = str(_path(kernel, "kernel", job.base_dir)) if isinstance(kernel, str) else kernel
            item = {"type": "blur", "image": observed, "kernel": kernel, "noise_sigma": sigma}
            default_size = (h, w)
        size = _check_canvas(spec["size"], "size") if "size" in spec else default_size
        layout = {"canvas": list(size), "items": [item]} | {k: v for k, v in overrides.items() if k != "canvas"}
        settings, constraints = parse_layout(layout, base_dir=job.base_dir, device=self.model.device)
        shown = observed * mask if mask is not None else observed  # unknown pixels shown as 0 (grey)
        return Prepared(settings, constraints, truth, shown, mask, details)

    # ------------------------------------------------------------------------------------- running
    def run(self, job: Job, out: str | Path) -> dict:
        """Run ``job`` and write its outputs and record (atomically, the record last) under ``out``; returns
        the record. Bad input makes a ``failed`` record (and the next run tries again)."""
        folder = job_dir(out, job)
        start = time.perf_counter()
        base = {"id": job.id, "line": job.line, "fingerprint": self.fingerprint(job), "job": job.spec,
                "kind": job.kind, "task": job.task, "method": job.method}
        try:
            record = base | self._run(job, folder, start)
        except (ValueError, OSError) as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not message.startswith(job.where):
                message = f"{job.where}: {message}"
            record = base | {"status": "failed", "error": message, "written": []}
        record |= {"rank": self.rank, "world_size": self.world_size, "device": str(self.model.device),
                   "dtype": str(self.model.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "finished_at": datetime.datetime.now().isoformat(timespec="seconds")}
        record["seconds"] = record.get("seconds", {}) | {"total": time.perf_counter() - start}
        _write_json(folder / RECORD, record)
        return record

    def _run(self, job: Job, folder: Path, start: float) -> dict:
        from ..io import save_image
        from ..solver import Result

        prepared = self.prepare(job)
        settings, constraints, model = prepared.settings, prepared.constraints, self.model
        seconds = {"prepare": time.perf_counter() - start}
        written: list[Path] = []
        if prepared.observation is not None:
            written.append(save_image(prepared.observation[0], folder / "observation.png"))
        if prepared.mask is not None:
            written.append(save_image(prepared.mask[0].expand(3, -1, -1) * 2 - 1, folder / "mask.png"))
        tick = time.perf_counter()
        unrefined, result, image = None, None, None
        if job.method == "dps":
            result, unrefined, solve_seconds = _solve(model, settings, constraints,
                                                      job.spec.get("save_unrefined", False))
            seconds |= solve_seconds
        elif job.method == "prior":
            generators = [torch.Generator().manual_seed(settings.seed + i) for i in range(settings.batch_size)]
            z = model.sample(settings.batch_size, steps=settings.steps, eta=settings.options.get("eta"),
                             generator=generators, progress=False)
            with torch.no_grad():
                result = Result(model, z, model.decode(z), [c.to(model.device, model.dtype) for c in constraints], {})
        else:
            image = self._classical(job, prepared)
        seconds["solve"] = time.perf_counter() - tick
        tick = time.perf_counter()
        record: dict[str, Any] = {"settings": _settings_dict(settings)}
        if prepared.details:
            record["observation"] = prepared.details
        if result is not None:
            outputs = result.save(folder / "output.png", settings.canvas)
            record["report"] = result.report()
            if job.method == "dps":
                record["never_guided"] = result.never_guided()
                record["settings"] |= _solve_options(settings, result.constraints)
        else:
            outputs = [save_image(image[0], folder / "output.png")]
            record["report"] = _score_image(prepared.constraints, image)
        written += outputs
        if prepared.truth is not None:
            record["metrics"] = _metrics(outputs, result, image, prepared.truth, settings.canvas)
        if unrefined is not None:
            paths = unrefined.save(folder / "unrefined.png", settings.canvas)
            written += paths
            record["unrefined"] = {"report": unrefined.report(), "written": [p.name for p in paths]}
            if prepared.truth is not None:
                record["unrefined"]["metrics"] = _metrics(paths, unrefined, None, prepared.truth, settings.canvas)
        seconds["save_and_score"] = time.perf_counter() - tick
        return record | {"status": "done", "seconds": seconds, "written": [p.name for p in written]}

    def _classical(self, job: Job, prepared: Prepared) -> torch.Tensor:
        """The classical answer at the canvas size (:mod:`infd_solve.baselines`): bicubic upsampling (SR), a
        harmonic fill of the unknown pixels (inpainting), Wiener deconvolution (deblurring)."""
        from ..baselines import bicubic, harmonic_fill, wiener_deconvolution

        constraint = prepared.constraints[0]
        size = tuple(prepared.settings.canvas)
        observed = constraint.image.cpu().float()
        if job.task == "sr":
            return bicubic(observed, size)
        if job.task == "inpaint":
            mask = constraint.operator.weight.cpu().float()
            return _resized(harmonic_fill(observed, mask), size).clamp(-1, 1)
        kernel = constraint.operator.kernel.cpu()
        return _resized(wiener_deconvolution(observed, kernel, constraint.noise_sigma), size).clamp(-1, 1)


def _solve(model, settings, constraints, unrefined: bool):
    """A ``dps`` job's solve (any sampler family): the result, the sampler's result before refinement when
    asked for (corrected like the result), and the seconds each phase took. A constraint that never guided
    is recorded, not warned about."""
    from ..consistency import correct
    from ..solver import GuidanceWarning, Result, Solver

    solver = Solver(model, **settings.solver_kwargs(), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuidanceWarning)
        result = solver.solve(constraints, batch_size=settings.batch_size, seed=settings.seed)
    steps, phases = result.history["step_seconds"], result.history["phase"]
    seconds = {phase: sum(s for s, p in zip(steps, phases) if p == key)
               for phase, key in (("sampling", "sample"), ("refinement", "refine"))}
    if not unrefined:
        return result, None, seconds
    z = result.sampled_latent
    with torch.no_grad():
        field = model.decode(z)
    corrections = correct(model, field, result.constraints) if solver.options["consistency"] else []
    return result, Result(model, z, field, result.constraints, {}, corrections), seconds


def _solve_options(settings, constraints) -> dict:
    """Every option the solve ran with (the family "auto" chose, its steps, the defaults), for the record."""
    from ..solver import solver_options

    options = solver_options(constraints=constraints, **settings.solver_kwargs())
    return {name: value for name, value in options.items() if name != "timesteps"}


def _settings_dict(settings) -> dict:
    return {"canvas": list(settings.canvas), "seed": settings.seed, "batch_size": settings.batch_size} | \
        settings.solver_kwargs()


def validate_jobs(jobs: Iterable[Job], runner: Runner) -> None:
    """Build every job once before any work (images read, observations simulated, layouts parsed), so a bad
    line stops the run at the start; :class:`JobError` naming it. Conversion notes are shown once here."""
    for job in jobs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner.prepare(job, quiet=False)
        for w in caught:
            warnings.warn(f"{job.where}: {w.message}", w.category, stacklevel=2)


def run_jobs(jobs: Sequence[Job], out: str | Path, runner: Runner, processes: Processes | None = None,
             progress: bool = True) -> dict:
    """Run this process's share of ``jobs`` (:func:`split_jobs`) under ``out``, skipping finished ones
    (:func:`is_finished`); returns counts ``{"done", "skipped", "failed"}``. One progress bar per process."""
    from tqdm.auto import tqdm

    processes = processes or Processes()
    mine = split_jobs(jobs, processes.rank, processes.world_size)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    label = f"rank {processes.rank}/{processes.world_size}" if processes.world_size > 1 else "jobs"
    with tqdm(total=len(mine), desc=label, position=processes.rank, disable=not progress, dynamic_ncols=True,
              leave=True) as bar:
        for job in mine:
            if is_finished(out, job, runner.fingerprint(job)):
                counts["skipped"] += 1
            else:
                record = runner.run(job, out)
                counts[record["status"] if record["status"] == "failed" else "done"] += 1
                if record["status"] == "failed":
                    bar.write(f"failed: {record['error']}")
            bar.update()
            bar.set_postfix(counts, refresh=False)
    return counts
