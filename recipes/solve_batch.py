"""Many solves from one JSON Lines file of jobs, in one process or several, resumable.

    python recipes/solve_batch.py JOBS.jsonl --out outputs/batch
    torchrun --nproc_per_node 4 recipes/solve_batch.py JOBS.jsonl --out outputs/batch     # one GPU per process
    torchrun --standalone --nproc_per_node 2 recipes/solve_batch.py JOBS.jsonl --out outputs/batch --device cpu
    python recipes/solve_batch.py JOBS.jsonl --out outputs/batch --import my_constraints.py   # your own item types

Each line is a job: a layout (a file or an inline object) or a super-resolution / inpainting / deblurring
task on an image, with its seed and settings; the format is in ``infd_solve/batch/__init__.py``. Every line is
checked, and every job built once, before any work. Jobs go to the processes round-robin; each job writes
``OUT/jobs/<id>/`` (its images, then ``record.json``: settings, report, metrics, timings, written paths),
every file atomically; rank 0 merges ``OUT/summary.csv`` and ``OUT/summary.md`` at the end. Run the same
command again to resume: finished jobs are skipped, the rest run. Layouts may use item types of your own:
``--import MODULE_OR_FILE`` (repeatable) imports the module that defines them, and types a package declares
as ``infd_solve.constraints`` entry points are found without it (see ``infd_solve/layout.py``).

A job's outputs are the same bytes whatever the number of processes: its noise comes from its seed alone
(drawn on the CPU), and every process uses ``--threads`` torch threads (default 1; a different count may
change the rounding of float sums, hence the bytes; keep it fixed across runs you compare). Several
processes under ``torchrun`` use one GPU each when there are GPUs (``--device cpu`` forces the CPU; torchrun
sets up the gloo group they wait for each other with).

Exit codes: 0 every job done; 2 bad input (a bad line, named: ``JOBS.jsonl line 3: ...``, stops the run
before any work; a job that fails while running is recorded and the others go on, then exit 2); 3 some
constraint never guided some sample; 130 Ctrl-C (every file written is complete; run again to resume).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

PROG = "solve_batch.py"


def build_parser(prog: str = PROG):
    from infd_solve import cli

    p = cli.new_parser(prog, __doc__)
    p.add_argument("jobs", type=Path, help="JSON Lines file of jobs (format: infd_solve/batch/__init__.py)")
    p.add_argument("--out", type=Path, required=True, help="output directory (jobs/<id>/, summary.csv, summary.md)")
    p.add_argument("--model", default="default",
                   help='"default" (the shipped model), a directory saved by INFDModel.save, or an official .pth')
    p.add_argument("--clip", default="default", help="CLIP for layouts with CLIP items (default: the shipped one)")
    p.add_argument("--device", default=None,
                   help="torch device (default: this process's GPU under torchrun, or cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1; fixed for "
                   "byte-identical outputs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_import_argument(p)
    return p


def run(args, processes) -> list[dict]:
    from infd_solve import batch, cli, pretrained

    batch.set_determinism(args.threads)
    cli.import_user_modules(args.imports)
    jobs = batch.read_jobs(args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    device = batch.process_device(args.device, processes)
    model_file = cli.model_path(args.model)
    model = cli.load_sampling_model(model_file, device)
    name = args.model if args.model in pretrained.NAMES else str(model_file.resolve())
    runner = batch.Runner(model, clip=args.clip, model_name=name, rank=processes.rank,
                          world_size=processes.world_size)
    batch.validate_jobs(jobs, runner)
    start = time.perf_counter()
    counts = batch.run_jobs(jobs, args.out, runner, processes, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(f"rank {processes.rank}/{processes.world_size}: {counts['done']} done, {counts['skipped']} skipped "
          f"(finished before), {counts['failed']} failed in {seconds:.1f} s", file=sys.stderr, flush=True)
    processes.barrier()  # every rank's records are written
    rows = batch.merge_summary(jobs, args.out, write=processes.rank == 0)
    if processes.rank == 0:
        print(f"{cli.plural(len(rows), 'job')}; wrote {args.out / 'summary.csv'} and {args.out / 'summary.md'}")
    failed = [r for r in rows if r.get("status") != "done"]
    if failed:
        first = failed[0].get("error") or f"job {failed[0]['id']!r} has no record"
        cli.fail(args.prog, f"{len(failed)} of {len(rows)} jobs did not finish (see {args.out / 'summary.md'}); "
                 f"first: {first}")
    unguided = [r["id"] for r in rows if r.get("never guided")]
    if unguided:
        cli.fail(args.prog, f"guidance never happened in {len(unguided)} job(s) ({', '.join(unguided[:5])}): "
                 "their outputs show unguided samples (see summary.md)", 3)
    return rows


def run_batch(argv=None, prog: str = PROG) -> list[dict]:
    """The program in-process: returns the summary rows; ends with ``SystemExit`` (after its one-line error)
    where the program exits non-zero (see the exit codes above)."""
    from infd_solve import cli

    with cli.user_errors(prog):  # the heavy imports too: Ctrl-C during them ends with one line
        from infd_solve import batch

        parser = build_parser(prog)
        args = parser.parse_args(argv)
        args.prog = prog
        if args.threads <= 0:
            parser.error(f"--threads must be positive, got {args.threads}")
        with batch.launch() as processes:
            return run(args, processes)


def main(argv=None, prog: str = PROG) -> int:
    """The program: returns its exit status (0 every job done, 2 bad input or a failed job, 3 never guided,
    130 Ctrl-C)."""
    from infd_solve import cli

    return cli.exit_status(run_batch, argv, prog)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # torchrun stops workers with SIGTERM: as Ctrl-C
    sys.exit(main())
