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
tasks only: bicubic upsampling, a harmonic fill of the holes, or Wiener deconvolution), ``save_unrefined``
(``"dps"`` only: also save and score the sample as it was before the refinement steps, at no extra cost),
``sampler`` and every solver option of that sampler (:mod:`infd_solve.options`: ``steps``,
``guidance_scale``, ``eta``, ``refine_steps``, ...). A layout job may also set ``canvas`` and ``batch_size``;
these fields override the layout's own.

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

The parts: :mod:`~infd_solve.batch.jobs` (the job schema, each line's checks, reading a jobs file),
:mod:`~infd_solve.batch.processes` (``torchrun`` ranks, the jobs of each, devices, determinism),
:mod:`~infd_solve.batch.simulate` (observations from a truth), :mod:`~infd_solve.batch.runner` (building,
solving and recording a job; :func:`validate_jobs`, :func:`run_jobs`), :mod:`~infd_solve.batch.scoring`
(metrics of the outputs), :mod:`~infd_solve.batch.records` (records on disk, resuming) and
:mod:`~infd_solve.batch.summary` (``summary.csv``, ``summary.md``).
"""

from .jobs import (COMMON_FIELDS, ID_PATTERN, LAYOUT_FIELDS, MAX_JOBS, METHODS, TASK_COMMON, TASK_FIELDS, TASKS, Job,
                   JobError, parse_job, read_jobs)
from .processes import (DEFAULT_THREADS, Processes, interrupt_on_sigterm, launch, process_device, set_determinism,
                        split_jobs)
from .records import RECORD, is_finished, job_dir
from .runner import Prepared, Runner, run_jobs, validate_jobs
from .summary import merge_summary, summary_row

__all__ = ["Job", "JobError", "Processes", "Runner", "read_jobs", "parse_job", "split_jobs", "validate_jobs",
           "run_jobs", "merge_summary", "launch", "interrupt_on_sigterm", "is_finished", "job_dir", "DEFAULT_THREADS"]
