"""Many solves from one file of jobs, in one process or many (``torchrun``), resumable.

A jobs file is JSON Lines: one job per line (blank lines are skipped, but counted in line numbers). A job is
a **layout** (a file or an inline object, see :mod:`infd_solve.layout`) or a **task**: super-resolution,
inpainting or deblurring of an image. Examples::

    {"id": "lake", "layout": "layouts/lake.json", "seed": 3}
    {"layout": {"canvas": 256, "items": [{"type": "color", "color": "#2a5caa", "box": [0, 0.6, 1, 1]}]}}
    {"task": "sr", "image": "small.png", "factor": 4, "noise_sigma": 0.01}
    {"task": "sr", "truth": "scene.png", "factor": 4, "noise_sigma": 0.05, "seed": 7}
    {"task": "inpaint", "truth": "scene.png", "hole": [0.25, 0.25, 0.75, 0.75]}
    {"task": "inpaint", "truth": "scene.png", "missing": 0.7, "method": "prior"}
    {"task": "deblur", "truth": "scene.png", "kernel": {"type": "gaussian", "size": 61, "sigma": 3.0}}

Fields of every job: ``id`` (names its output folder; default ``line<N>``), ``seed`` (default 0: sample i
of the job uses seed + i, so the seed alone decides its noise), ``method`` (``"dps"``, the default: the
guided :class:`~infd_solve.Solver`; ``"prior"``: an unguided sample from the same seed; ``"classical"``,
tasks only: bicubic upsampling, zero-filled holes, or the blurred image itself), ``save_unrefined``
(``"dps"`` only: also save and score the sample as it was before the refinement steps, at no extra cost),
and the solver options of layouts: ``steps``, ``guidance``, ``guidance_scale``, ``eta``, ``normalize``,
``max_grad_norm``, ``refine_steps``. A layout job may also set ``canvas`` and ``batch_size``; these fields
override the layout's own.

Task jobs: ``task`` (``"sr"``, ``"inpaint"``, ``"deblur"``); either ``image`` (the observation itself) or
``truth`` (a clean image: the observation is simulated from it, exactly through the constraint's operator,
with Gaussian noise of ``noise_sigma`` drawn from ``numpy.random.default_rng(noise_seed)``, default: the
job's ``seed``, then clamped to [-1, 1]; PSNR and SSIM against it are recorded); ``noise_sigma`` (in [-1, 1]
units, default 0; also the noise the constraint allows for); ``size`` (output side or ``[H, W]``, default:
the truth's / image's size, times ``factor`` for SR from an image). SR: ``factor`` (integer, default 4),
``operator`` (``"area"``, ``"bicubic"``; ``"render"`` with ``image`` only). Inpainting: one of ``mask`` (a
file, white = observed), ``hole`` (an unknown box ``[left, top, right, bottom]`` in fractions, snapped to
the pixel grid) or ``missing`` (with ``truth``: that fraction of the pixels, chosen by the noise generator,
is unknown). Deblurring: ``kernel`` (a spec like ``{"type": "motion", "size": 61, "length": 31, "seed":
0}``, nested lists, or a ``.npy`` / grayscale image file; see
:class:`~infd_solve.constraints.BlurObservation`). Relative paths start at the jobs file's directory
(inside a layout file, at the layout's).

Every job becomes a layout (a task's observation is an item holding the simulated tensor) and goes through
:func:`~infd_solve.layout.parse_layout`, :class:`~infd_solve.Solver`, :meth:`~infd_solve.Result.save` and
:meth:`~infd_solve.Result.report`. Its outputs go to ``OUT/jobs/<id>/`` (``output.png``, or
``output_<i>.png`` for a batch; ``observation.png`` and ``mask.png`` for tasks, the observation as guided,
quantized for viewing; ``unrefined.png``), each written atomically, and ``record.json`` last: its settings,
report, metrics, timings and written paths. A job is finished when its record is complete, says ``done``,
was made from the same job line and runner (model, CLIP), and every file it lists exists; anything else
(no record, a truncated one, a failure, a changed line) runs again. So a re-run resumes after a crash or
Ctrl-C.

Processes: jobs go to ranks round-robin in file order (``jobs[rank::world_size]``). Each job's noise comes
from its own seed on the CPU, and every process sets the same fixed number of torch threads (``threads``,
default 1: the reduction order of a float sum can depend on the thread count), so a job's outputs are the
same bytes whichever rank runs it and however many there are. ``summary.csv`` and ``summary.md`` are
merged from the records by rank 0 once every rank is done.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import checks

__all__ = ["Job", "JobError", "Processes", "Runner", "read_jobs", "parse_job", "split_jobs", "validate_jobs",
           "run_jobs", "merge_summary", "launch", "interrupt_on_sigterm", "is_finished", "job_dir", "DEFAULT_THREADS"]

TASKS = ("sr", "inpaint", "deblur")
METHODS = ("dps", "prior", "classical")
COMMON_FIELDS = ("id", "seed", "method", "save_unrefined")  # besides the solver's options (infd_solve.options)
LAYOUT_FIELDS = ("layout", "canvas", "batch_size")
TASK_FIELDS = {"sr": ("factor", "operator"), "inpaint": ("mask", "hole", "missing"), "deblur": ("kernel",)}
TASK_COMMON = ("task", "image", "truth", "size", "noise_sigma", "noise_seed")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RECORD = "record.json"
DEFAULT_THREADS = 1
MAX_JOBS = 1_000_000


class JobError(ValueError):
    """A bad job; the message starts with where it is (``jobs.jsonl line 3: ...``)."""


# --------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One line of a jobs file: ``spec`` is its JSON object as written."""

    id: str
    line: int
    spec: dict
    base_dir: Path
    source: Path | None = None

    @property
    def kind(self) -> str:
        return "layout" if "layout" in self.spec else "task"

    @property
    def task(self) -> str | None:
        return self.spec.get("task")

    @property
    def method(self) -> str:
        return self.spec.get("method", "dps")

    @property
    def where(self) -> str:
        return f"{self.source.name if self.source else 'jobs'} line {self.line}"

    def error(self, message: str) -> JobError:
        return JobError(f"{self.where}: {message}")


def _unknown(key, allowed, what: str) -> ValueError:
    from .checks import unknown_field

    return ValueError(f"{what}: {unknown_field(key, allowed)}")


def _path(value, name: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a file path, got {checks.shown(value)}")
    path = (base_dir / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise ValueError(f"{name}: no file at {path}")
    return path


def _box(value, name: str):
    from .rendering import check_box

    return check_box(value, name)


def parse_job(obj, line: int, base_dir: str | Path = ".", source: Path | None = None) -> Job:
    """A :class:`Job` from one line's JSON object, its structure and values checked (files must exist);
    :class:`JobError` naming the line and the field otherwise. Layout items and images are checked by
    :func:`validate_jobs`."""
    base_dir = Path(base_dir)
    where = f"{source.name if source else 'jobs'} line {line}"
    try:
        return Job(_check_spec(obj, base_dir) or f"line{line}", line, obj, base_dir, source)
    except ValueError as e:
        raise JobError(f"{where}: {str(e).splitlines()[0]}") from None


def _check_spec(obj, base_dir: Path) -> str:
    """Checks a job object; returns its id (``""`` when none is given)."""
    if not isinstance(obj, dict):
        raise ValueError(f"a job is a JSON object like {{\"task\": \"sr\", \"image\": ...}} or {{\"layout\": ...}}, "
                         f"got {checks.shown(obj)}")
    if ("layout" in obj) == ("task" in obj):
        raise ValueError("a job has either a 'layout' (a file or an object) or a 'task' "
                         f"({', '.join(map(repr, TASKS))}), " + ("not both" if "layout" in obj else "got neither"))
    job_id = obj.get("id", "")
    if "id" in obj and (not isinstance(job_id, str) or not ID_PATTERN.fullmatch(job_id)):
        raise ValueError(f"id must be 1-100 letters, digits, '.', '_' or '-' (it names a folder), starting with a "
                         f"letter or digit, got {checks.shown(job_id)}")
    method = obj.get("method", "dps")
    checks.choice(method, "method", METHODS)
    if "seed" in obj:
        checks.integer(obj["seed"], "seed", 0, 2**63)
    if "save_unrefined" in obj:
        if checks.boolean(obj["save_unrefined"], "save_unrefined") and method != "dps":
            raise ValueError(f"save_unrefined: only a 'dps' job refines, this one is {method!r}")
    options = tuple(_option_fields(obj))
    if "layout" in obj:
        allowed = COMMON_FIELDS + LAYOUT_FIELDS + options
        for key in obj:
            if key not in allowed:
                raise _unknown(key, allowed, "layout job")
        if method == "classical":
            raise ValueError("method: 'classical' is for tasks (sr, inpaint, deblur), not layouts")
        layout = obj["layout"]
        if isinstance(layout, str):
            _path(layout, "layout", base_dir)
        elif not isinstance(layout, dict):
            raise ValueError(f"layout must be a file path or a layout object, got {checks.shown(layout)}")
        if "batch_size" in obj:
            checks.integer(obj["batch_size"], "batch_size", 1)
        if "canvas" in obj:
            _check_canvas(obj["canvas"], "canvas")
        return job_id
    task = obj["task"]
    checks.choice(task, "task", TASKS)
    allowed = COMMON_FIELDS + TASK_COMMON + TASK_FIELDS[task] + options
    for key in obj:
        if key not in allowed:
            raise _unknown(key, allowed, f"{task} job")
    if ("image" in obj) == ("truth" in obj):
        raise ValueError("give either 'image' (the observation) or 'truth' (a clean image to simulate the "
                         "observation from), " + ("not both" if "image" in obj else "got neither"))
    source = "image" if "image" in obj else "truth"
    _path(obj[source], source, base_dir)
    if "size" in obj:
        _check_canvas(obj["size"], "size")
    if "noise_sigma" in obj:
        checks.number(obj["noise_sigma"], "noise_sigma", 0.0, 2.0)
    if "noise_seed" in obj:
        checks.integer(obj["noise_seed"], "noise_seed", 0, 2**63)
    if task == "sr":
        if "factor" in obj:
            checks.integer(obj["factor"], "factor", 1, 16)
        operator = obj.get("operator", "area")
        checks.choice(operator, "operator", ("area", "bicubic", "render"))
        if operator == "render" and source == "truth":
            raise ValueError("operator: 'render' has no camera to simulate an observation with; with 'truth' use "
                             "'area' or 'bicubic'")
    elif task == "inpaint":
        chosen = [k for k in TASK_FIELDS["inpaint"] if k in obj]
        if len(chosen) != 1:
            raise ValueError("an inpaint job needs exactly one of 'mask' (a file, white = observed), 'hole' (an "
                             "unknown box) or 'missing' (a fraction of unknown pixels), got "
                             + (", ".join(map(repr, chosen)) if chosen else "none"))
        if "mask" in obj:
            _path(obj["mask"], "mask", base_dir)
        elif "hole" in obj:
            _box(obj["hole"], "hole")
        else:
            checks.number(obj["missing"], "missing", 0.0, 1.0, strict=True)
            if obj["missing"] >= 1 or source == "image":
                raise ValueError("missing: " + ("must be < 1 (some pixel must be observed)" if obj["missing"] >= 1
                                                else "needs 'truth' (which pixels are missing in a given image "
                                                "is its 'mask')"))
    else:
        if "kernel" not in obj:
            raise ValueError("kernel: missing; a deblur job needs a kernel, e.g. {\"type\": \"gaussian\", "
                             "\"size\": 61, \"sigma\": 3.0}")
        if isinstance(obj["kernel"], str):
            _path(obj["kernel"], "kernel", base_dir)
    return job_id


def _check_canvas(value, name: str) -> tuple[int, int]:
    from .layout import MAX_CANVAS
    from .rendering import check_size

    size = check_size(tuple(value) if isinstance(value, list) else value, name)
    if max(size) > MAX_CANVAS:
        raise ValueError(f"{name}: {checks.shown(value)} is larger than {MAX_CANVAS} pixels per side")
    return size


def _option_fields(obj: dict) -> dict:
    """The job's solver options (:mod:`infd_solve.options`), checked: ``ValueError`` naming the field."""
    from .solver import option_names, solver_options

    try:
        names = option_names(obj.get("sampler", "dps"))
    except ValueError as e:
        raise ValueError(f"sampler: {e}") from None
    given = {k: v for k, v in obj.items() if k in names}
    solver_options(**given)
    return given


def read_jobs(path: str | Path) -> list[Job]:
    """The jobs of a JSON Lines file, each line checked (:func:`parse_job`); :class:`JobError` naming the
    first bad line. Ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"{path}: no jobs file there")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JobError(f"{path}: not a text (UTF-8 JSON Lines) file") from None
    jobs: list[Job] = []
    ids: dict[str, int] = {}
    source = path.resolve()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise JobError(f"{path.name} line {number}: not valid JSON: {e.msg} at column {e.colno}") from None
        except RecursionError:
            raise JobError(f"{path.name} line {number}: JSON nested too deeply") from None
        job = parse_job(obj, number, source.parent, source)
        if job.id in ids:
            raise JobError(f"{path.name} line {number}: id {job.id!r} is already used by line {ids[job.id]}")
        ids[job.id] = number
        jobs.append(job)
        if len(jobs) > MAX_JOBS:
            raise JobError(f"{path}: more than {MAX_JOBS} jobs; split the file")
    if not jobs:
        raise JobError(f"{path}: no jobs (every line is blank)")
    return jobs


def split_jobs(jobs: Sequence[Job], rank: int, world_size: int) -> list[Job]:
    """The jobs of process ``rank`` of ``world_size``: every ``world_size``-th one in file order, from
    ``rank`` (deterministic, and neighbouring jobs, often alike in cost, go to different processes)."""
    world_size = checks.integer(world_size, "world_size", 1)
    rank = checks.integer(rank, "rank", 0, world_size - 1)
    return list(jobs[rank::world_size])


# ------------------------------------------------------------------------------------------ processes
@dataclass
class Processes:
    """Where this process stands among those ``torchrun`` started (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:  # the process group is torn down however the run ends
        self.close()


def interrupt_on_sigterm() -> None:
    """Make SIGTERM, which torchrun and job schedulers send to stop workers, end the process as Ctrl-C does
    (``KeyboardInterrupt``: temporary files removed, every written file complete). For scripts' main."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def launch(timeout_days: float = 7.0) -> Processes:
    """This process's place, from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``), to use as ``with launch() as processes:``; with several, a gloo process group (used only
    to wait for each other at the end, on CPUs and GPUs alike; the long timeout lets one rank wait for
    another's last job)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(days=timeout_days))
    return Processes(rank, world_size, local_rank)


def process_device(device, processes: Processes):
    """The device of this process: ``device`` if given (``"cuda"`` with several processes: one GPU per local
    rank), else the local rank's GPU when there are GPUs, else the CPU."""
    if device is None or str(device) == "cuda":
        if torch.cuda.is_available():
            return torch.device("cuda", processes.local_rank % torch.cuda.device_count())
        if device is None:
            return torch.device("cpu")
    return device


def set_determinism(threads: int = DEFAULT_THREADS) -> None:
    """The same float operations in every process: a fixed number of torch threads, deterministic cuDNN."""
    torch.set_num_threads(checks.integer(threads, "threads", 1, 1024))
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


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


def job_dir(out: str | Path, job: Job) -> Path:
    return Path(out) / "jobs" / job.id


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # absent or half-written: not finished
    return record if isinstance(record, dict) else None


def is_finished(out: str | Path, job: Job, fingerprint: str) -> bool:
    """Whether ``job`` has a complete ``done`` record from the same job line and runner, with every file it
    lists present."""
    folder = job_dir(out, job)
    record = _read_record(folder / RECORD)
    if not record or record.get("status") != "done" or record.get("fingerprint") != fingerprint:
        return False
    written = record.get("written")
    return isinstance(written, list) and all(isinstance(p, str) and (folder / p).is_file() for p in written)


def _quantized(image: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file of ``image`` holds, back in [-1, 1] (metrics measure what is written)."""
    from .io import to_uint8

    return to_uint8(image).movedim(-1, -3).double() / 127.5 - 1


def _resized(image: torch.Tensor, size) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def _sr_observe(truth: torch.Tensor, factor: int, operator: str) -> torch.Tensor:
    """The truth seen by the SR camera: the operator of ``LowResObservation`` (``render`` is the area average
    of the canvas: what rendering on the coarse grid approximates)."""
    from .operators import Downsample

    h, w = truth.shape[-2:]
    low = (max(1, round(h / factor)), max(1, round(w / factor)))
    return Downsample((h, w), low, "bicubic" if operator == "bicubic" else "area")(truth)


def _simulate(job: Job, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """The observation of ``truth`` for a task job (and its mask): the constraint's operator, then seeded
    Gaussian noise, clamped to [-1, 1] (the constraints take images in that range)."""
    from .operators import Blur

    spec = job.spec
    noise_seed = spec.get("noise_seed", spec.get("seed", 0))
    rng = np.random.default_rng(noise_seed)
    mask, details = None, {"noise_sigma": spec.get("noise_sigma", 0.0), "noise_seed": noise_seed}
    if job.task == "sr":
        clean = _sr_observe(truth, spec.get("factor", 4), spec.get("operator", "area"))
    elif job.task == "deblur":
        kernel = spec["kernel"]
        kernel = _path(kernel, "kernel", job.base_dir) if isinstance(kernel, str) else kernel
        clean = Blur(kernel, truth.shape[-2:]).to(truth.dtype)(truth)
    else:
        h, w = truth.shape[-2:]
        if "missing" in spec:  # exactly that share of the pixels, all channels
            unknown = rng.permutation(h * w)[: round(spec["missing"] * h * w)]
            flat = np.ones(h * w, dtype=np.float32)
            flat[unknown] = 0
            mask = torch.from_numpy(flat.reshape(h, w))[None, None]
        else:
            mask = _hole_mask(spec["hole"], (h, w))
        clean = truth
    sigma = spec.get("noise_sigma", 0.0)
    noisy = clean + sigma * torch.from_numpy(rng.standard_normal(clean.shape)).to(clean.dtype) if sigma else clean
    details["clamped_fraction"] = float(((noisy < -1) | (noisy > 1)).double().mean()) if sigma else 0.0
    return noisy.clamp(-1, 1), mask, details


def _hole_mask(hole, size) -> torch.Tensor:
    """1 = observed; ``hole`` (fractions) snapped to the pixel edges nearest to it."""
    h, w = size
    left, top, right, bottom = _box(hole, "hole")
    mask = torch.ones(1, 1, h, w)
    mask[..., round(top * h) : round(bottom * h), round(left * w) : round(right * w)] = 0
    if mask.sum() == 0:
        raise ValueError("hole: covers every pixel; nothing is observed")
    return mask


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
            from .clip import load_clip

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

        from .constraints.base import REGISTRY

        items = layout.get("items")
        kinds = {item.get("type") for item in items if isinstance(item, dict)} if isinstance(items, list) else set()
        return any(k in REGISTRY and "clip" in inspect.signature(REGISTRY[k]).parameters for k in kinds
                   if isinstance(k, str))

    def prepare(self, job: Job, quiet: bool = True) -> Prepared:
        """Build ``job``: :class:`JobError` naming its line (and field) when it cannot be. ``quiet``: no
        conversion notes (:func:`validate_jobs` shows them once)."""
        from .layout import LayoutError

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
        from .layout import parse_layout, read_layout

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

        from .io import load_image

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
                from .io import load_mask

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
        from .io import save_image
        from .solver import Result

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
            result, unrefined, solve_seconds = _solve(model, settings, constraints, job.spec.get("save_unrefined", False))
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
        from .baselines import bicubic, harmonic_fill, wiener_deconvolution

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
    from .consistency import correct
    from .solver import GuidanceWarning, Result, Solver

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


def _settings_dict(settings) -> dict:
    return {"canvas": list(settings.canvas), "seed": settings.seed, "batch_size": settings.batch_size} | \
        settings.solver_kwargs()


def _score_image(constraints, image: torch.Tensor) -> dict:
    """``Result.report()``'s measures for an image that is not a field: each constraint scores the image
    resampled to its ``score_size`` (the same size for the tasks' whole-canvas observations)."""
    out = {}
    for c in constraints:
        c.to("cpu", torch.float32)
        with torch.no_grad():
            scores = c.score(_resized(image, c.score_size))
        out[c.name] = {k: v.double().cpu().tolist() for k, v in scores.items()}
    return out


def _metrics(outputs: list[Path], result, image, truth: torch.Tensor, canvas) -> dict:
    """PSNR and SSIM against the truth, per sample, on the 8-bit output at the truth's size (the written file
    when the canvas is that size; else the result rendered, or the image resampled, at it)."""
    from .io import load_image
    from .metrics import psnr, ssim

    size = tuple(truth.shape[-2:])
    if tuple(canvas) == size:
        images = [load_image(p) for p in outputs]
    elif result is not None:
        images = list(_quantized(result.render(size).cpu()).split(1))
    else:
        images = [_quantized(_resized(image, size))]
    values = {"psnr": [], "ssim": []}
    for x in images:
        x, t = x.double(), truth.double()
        values["psnr"].append(float(psnr(x, t)))
        values["ssim"].append(float(ssim(x, t)) if min(size) >= 11 else float("nan"))
    return values


def _write_json(path: Path, obj) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n", encoding="utf-8")


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


# ---------------------------------------------------------------------------------------------- summary
def _mean(values) -> float | None:
    values = [v for v in (values if isinstance(values, list) else [values]) if isinstance(v, (int, float))]
    return float(np.mean(values)) if values else None


def summary_row(job: Job, record: dict | None) -> dict:
    """One flat row of a job's record: settings, status, seconds, metrics and report measures (means over
    the job's samples), the unrefined sample's prefixed ``unrefined``."""
    row: dict[str, Any] = {"id": job.id, "line": job.line, "kind": job.kind, "task": job.task or "",
                           "method": job.method}
    if record is None:
        return row | {"status": "missing"}
    row |= {"seed": record.get("settings", {}).get("seed", job.spec.get("seed", 0)), "status": record.get("status"),
            "seconds": _mean(record.get("seconds", {}).get("total"))}
    for prefix, part in (("", record), ("unrefined ", record.get("unrefined") or {})):
        for name, value in (part.get("metrics") or {}).items():
            row[f"{prefix}{name}"] = _mean(value)
        for constraint, measures in (part.get("report") or {}).items():
            for measure, value in measures.items():
                row[f"{prefix}{constraint} {measure}"] = _mean(value)
    never = {k: v for k, v in (record.get("never_guided") or {}).items() if v}
    if never:
        row["never guided"] = "; ".join(f"{k} {v}" for k, v in never.items())
    if record.get("error"):
        row["error"] = record["error"]
    return row


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def merge_summary(jobs: Sequence[Job], out: str | Path, write: bool = True) -> list[dict]:
    """Rows of every job's record (:func:`summary_row`, file order); with ``write``, ``OUT/summary.csv``
    and ``OUT/summary.md`` (atomically)."""
    from .io import atomic_path

    rows = [summary_row(job, _read_record(job_dir(out, job) / RECORD)) for job in jobs]
    if write:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})
        with atomic_path(Path(out) / "summary.csv") as tmp:
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
        counts = {s: sum(r.get("status") == s for r in rows) for s in ("done", "failed", "missing")}
        lines = [f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), "",
                 "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
        with atomic_path(Path(out) / "summary.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows
