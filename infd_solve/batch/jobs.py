"""Jobs files: the job schema, each line's checks and reading a file (the format: :mod:`infd_solve.batch`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import checks

TASKS = ("sr", "inpaint", "deblur")
METHODS = ("dps", "prior", "classical")
COMMON_FIELDS = ("id", "seed", "method", "save_unrefined")  # besides the solver's options (infd_solve.options)
LAYOUT_FIELDS = ("layout", "canvas", "batch_size")
TASK_FIELDS = {"sr": ("factor", "operator"), "inpaint": ("mask", "hole", "missing"), "deblur": ("kernel",)}
TASK_COMMON = ("task", "image", "truth", "size", "noise_sigma", "noise_seed")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_JOBS = 1_000_000


class JobError(ValueError):
    """A bad job; the message starts with where it is (``jobs.jsonl line 3: ...``)."""


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
    from ..checks import unknown_field

    return ValueError(f"{what}: {unknown_field(key, allowed)}")


def _path(value, name: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a file path, got {checks.shown(value)}")
    path = (base_dir / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise ValueError(f"{name}: no file at {path}")
    return path


def _box(value, name: str):
    from ..rendering import check_box

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
    job_id = _check_common(obj)
    options = tuple(_option_fields(obj))
    if "layout" in obj:
        _check_layout_job(obj, base_dir, options)
    else:
        _check_task_job(obj, base_dir, options)
    return job_id


def _check_common(obj: dict) -> str:
    """The fields of every job: ``id`` (returned, ``""`` when none is given), ``method``, ``seed``,
    ``save_unrefined``."""
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
    return job_id


def _check_layout_job(obj: dict, base_dir: Path, options: tuple) -> None:
    allowed = COMMON_FIELDS + LAYOUT_FIELDS + options
    for key in obj:
        if key not in allowed:
            raise _unknown(key, allowed, "layout job")
    if obj.get("method", "dps") == "classical":
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


def _check_task_job(obj: dict, base_dir: Path, options: tuple) -> None:
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
        _check_sr(obj, source)
    elif task == "inpaint":
        _check_inpaint(obj, source, base_dir)
    else:
        _check_deblur(obj, base_dir)


def _check_sr(obj: dict, source: str) -> None:
    if "factor" in obj:
        checks.integer(obj["factor"], "factor", 1, 16)
    operator = obj.get("operator", "area")
    checks.choice(operator, "operator", ("area", "bicubic", "render"))
    if operator == "render" and source == "truth":
        raise ValueError("operator: 'render' has no camera to simulate an observation with; with 'truth' use "
                         "'area' or 'bicubic'")


def _check_inpaint(obj: dict, source: str, base_dir: Path) -> None:
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


def _check_deblur(obj: dict, base_dir: Path) -> None:
    if "kernel" not in obj:
        raise ValueError("kernel: missing; a deblur job needs a kernel, e.g. {\"type\": \"gaussian\", "
                         "\"size\": 61, \"sigma\": 3.0}")
    if isinstance(obj["kernel"], str):
        _path(obj["kernel"], "kernel", base_dir)


def _check_canvas(value, name: str) -> tuple[int, int]:
    from ..layout import MAX_CANVAS
    from ..rendering import check_size

    size = check_size(tuple(value) if isinstance(value, list) else value, name)
    if max(size) > MAX_CANVAS:
        raise ValueError(f"{name}: {checks.shown(value)} is larger than {MAX_CANVAS} pixels per side")
    return size


def _option_fields(obj: dict) -> dict:
    """The job's solver options (:mod:`infd_solve.options`), checked: ``ValueError`` naming the field."""
    from ..solver import option_names, solver_options

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
