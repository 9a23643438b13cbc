"""The command-line programs (``infd-layout``, ``infd-sr``, ``infd-inpaint``, ``infd-sample``; also run as
``python recipes/<name>.py``) and what they share: exit statuses, one-line errors, conversion notes, device
and model choice.

Each command module has ``main(argv) -> int``, the program (its console script exits with what it returns:
0 done, 2 bad input, 3 some constraint never guided, 130 Ctrl-C), and ``run_<command>(argv) -> dict``, the
same run in-process for tests and recipes that need its results (it ends with ``SystemExit`` where the
program would exit with a non-zero status). Bad input (a missing file, a bad box, a corrupt checkpoint) ends
with ``PROG: error: ...``, Ctrl-C with ``PROG: error: interrupted ...`` (outputs are written atomically, so
nothing is half-written), and every conversion warning (image mode, polygon repair) is shown to the user as
``PROG: note: ...``: stderr holds only these lines and progress bars.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Iterator


def _printable(text: str) -> str:
    """Text any terminal can print (lone surrogates and the like escaped, never a crash while reporting)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def fail(prog: str, message: str, code: int = 2):
    print(f"{prog}: error: {_printable(message)}", file=sys.stderr)
    raise SystemExit(code)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: ...`` and exit code 2, without the usage block."""

    def error(self, message):
        fail(self.prog, f"{message} (see {self.prog} --help)")


def plain_text(docstring: str) -> str:
    """A module docstring as terminal text: reStructuredText markup (````code````, ``:class:`~a.B```,
    ``Usage::``) removed, so ``--help`` reads as prose."""
    def role(match):  # :class:`~infd_solve.Result` -> Result, :mod:`infd_solve.layout` -> infd_solve.layout
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if target.startswith("~") else target

    text = re.sub(r":[a-z]+:`([^`]+)`", role, docstring)
    text = re.sub(r"``(.+?)``", r"\1", text)
    return re.sub(r"::$", ":", text, flags=re.M).strip()


def new_parser(prog: str, doc: str) -> Parser:
    """A command's parser: one-line errors; its docstring, as plain text, gives the description (the first
    paragraph) and the epilog (the rest: usage examples, outputs, exit codes)."""
    description, _, epilog = plain_text(doc).partition("\n\n")
    # no abbreviations: --guidance != --guidance-scale
    return Parser(prog=prog, description=description, epilog=epilog or None, allow_abbrev=False,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def run_command(build_parser, run, argv, prog: str):
    """What every command's in-process ``run_<command>`` does: parse, then ``run(parser, args)`` and return
    its result, with one-line errors; inside :func:`user_errors`, so Ctrl-C during the (lazy, heavy) imports
    ends quietly too."""
    with user_errors(prog):
        parser = build_parser(prog)
        args = parser.parse_args(argv)
        args.prog = prog
        return run(parser, args)


def exit_status(run_in_process, argv, prog: str) -> int:
    """What every command's ``main`` does: ``run_in_process(argv, prog)``, and its exit status instead of its
    result (0, or the code it ended with). The console-script wrapper passes ``main()``'s value to
    ``sys.exit``, which would print a returned result and exit with 1."""
    try:
        run_in_process(argv, prog)
    except SystemExit as e:
        return 0 if e.code is None else e.code
    return 0


def plural(count: int, noun: str) -> str:
    """``1 constraint``, ``2 constraints``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Bad input (``ValueError``, including layout and checkpoint errors; a missing file; an unwritable output)
    ends with one line and exit code 2, Ctrl-C with exit code 130; warnings become ``PROG: note: ...``."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # a file left open by code Ctrl-C interrupted (an import reading a .pyc) is not the user's business;
        # Python's own defaults hide ResourceWarning too
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.showwarning = lambda message, *a, **k: print(f"{prog}: note: {_printable(message)}", file=sys.stderr)
        try:
            yield
        except (ValueError, OSError) as e:  # FileNotFoundError, PermissionError, CheckpointError, LayoutError
            fail(prog, str(e).splitlines()[0] if str(e) else type(e).__name__)
        except MemoryError:
            fail(prog, "out of memory; use a smaller size, batch or tile")
        except KeyboardInterrupt:
            fail(prog, "interrupted; every file written so far is complete, none is half-written", 130)


def print_notes(result, prog: str) -> None:
    """The result's notes (:meth:`infd_solve.Result.notes`) as ``PROG: note: ...`` lines on stderr."""
    for note in result.notes():
        print(f"{prog}: note: {_printable(note)}", file=sys.stderr)


def guidance_failures(result, prog: str) -> None:
    """Exit with code 3 (after the outputs are written) when some constraint never guided some sample."""
    failed = {name: samples for name, samples in result.never_guided().items() if samples}
    if failed:
        fail(prog, "guidance never happened for " + "; ".join(f"{n!r} (samples {s})" for n, s in failed.items())
             + ": its loss or gradient was never finite; the outputs show unguided samples", 3)


OPTION_FLAGS = ("sampler", "steps", "guidance_scale", "eta", "refine_steps")  # solver options with flags of their own


def _option_value(text: str):
    """A flag's value as JSON (numbers, true/false/null), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_solver_arguments(parser, overrides: bool = False) -> None:
    """The flags that set solver options (:mod:`infd_solve.options`, their help from there): ``--sampler``,
    ``--steps``, ``--guidance-scale``, ``--eta``, ``--refine-steps``, and ``--option KEY=VALUE`` for any other
    (repeatable: a sampler family's own, ``keep_outside``, ``consistency``, ...). ``overrides``: they override
    a layout's (the help says so)."""
    from ..options import SOLVER_OPTIONS
    from ..samplers.base import ETA, GUIDANCE_SCALE

    known = SOLVER_OPTIONS | {o.name: o for o in (GUIDANCE_SCALE, ETA)}
    for name in OPTION_FLAGS:
        option = known[name]
        default = "the layout's" if overrides else option.default
        shown = option.help if default is None else f"{option.help} (default: {default})"  # None: the help says
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_option_value, default=None,
                            metavar=name.upper(), help=shown)
    parser.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="any other solver option, e.g. --option keep_outside=true --option langevin_steps=8 "
                             "(repeatable; names: infd_solve.options and the sampler family's)")


def given_options(args) -> dict:
    """The solver options set by the flags of :func:`add_solver_arguments`, checked (``OptionError`` names the
    flag as the user typed it)."""
    from ..options import OptionError
    from ..solver import solver_options

    given = {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}
    given |= parse_assignments(args.options, "--option")
    try:
        solver_options(**given)
    except OptionError as e:
        flag = f"--{e.field.replace('_', '-')}" if e.field in OPTION_FLAGS else f"--option {e.field}"
        raise ValueError(f"{flag}: {e.reason}") from None
    return given


def options_summary(given: dict, constraints) -> str:
    """``"50 steps of dps"``: what a solve of ``constraints`` with the options ``given`` will do, for a
    command's header line."""
    from ..solver import solver_options

    options = solver_options(constraints=constraints, **given)
    return f"{options['steps']} steps of {options['sampler']}"


def check_solver_arguments(parser, args) -> None:
    """Refuse bad solver options and flags before any work, with argparse's usage error (exit 2)."""
    if args.tile <= 0:
        parser.error(f"--tile must be positive, got {args.tile}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    try:
        args.solver_options = given_options(args)
    except ValueError as e:
        parser.error(str(e))


def add_run_arguments(parser) -> None:
    """The model, seed, tiling, device and progress flags of the observation commands."""
    parser.add_argument("--model", default="default",
                        help='"default" (the shipped model), a directory saved by INFDModel.save, or an official .pth')
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--tile", type=int, default=256, help="render tile size for the output (default 256)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--trust", type=float, default=None,
                        help="share (0-1) of the model's own render the result keeps where the input leaves it "
                             "free (1: the model's fill throughout a hole; 0: the classical answer); default: "
                             "chosen from how well the model explains the input, fading deep into holes")
    add_solver_arguments(parser)


def add_import_argument(parser) -> None:
    """``--import MODULE_OR_FILE`` (repeatable), for the programs that read layouts: see
    :func:`import_user_modules`."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import this module (a name, found in the working directory or on the Python path, "
                             "or a .py file) before reading layouts, so the Constraint classes it defines (with "
                             "a layout_type) can be layout items and the sampler families it registers can be "
                             "used; repeatable")


def import_user_modules(specs) -> None:
    """Import each ``--import`` value: a path ending in ``.py`` is run as a module named after the file, any
    other value is a module name looked up as ``python -m`` would (working directory first). A constraint class
    with a ``layout_type`` registers itself when its module runs. ``ValueError`` naming the value when it
    cannot be imported (the module's own error, in one line)."""
    import importlib

    for spec in specs:
        if spec.endswith(".py"):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise ValueError(f"--import {spec}: no such file")
            if path.stem in sys.modules:  # running it under a taken name would replace that module
                raise ValueError(f"--import {spec}: a module named {path.stem!r} is already imported; rename the file")
            load = functools.partial(_run_file_as_module, path)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            load = functools.partial(importlib.import_module, spec)
        try:
            load()
        except Exception as e:  # noqa: BLE001 - whatever the user's module raises is reported, in one line
            detail = str(e).splitlines()[0] if str(e) else ""
            raise ValueError(f"--import {spec}: {type(e).__name__}{': ' + detail if detail else ''}") from None


def _run_file_as_module(path: Path) -> None:
    """Run ``path`` as the module named after its stem, in ``sys.modules`` while it runs and after, as an import
    would (so its classes can be found by name), and removed again if it fails."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = sys.modules[path.stem] = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]
        raise


def parse_assignments(pairs, option: str) -> dict:
    """``["KEY=JSON", ...]`` (a repeatable option's values) -> ``{KEY: value}``; a value that is not JSON is
    kept as a string."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} takes KEY=VALUE, got {pair!r}")
        out[key] = _option_value(value)
    return out


def resolve_device(name=None):
    """The recipes' one choice of device: ``name`` (a string or ``torch.device``, checked) if given, else cuda
    if available, else cpu. Everything else follows the model loaded there (constraints, CLIP and LPIPS)."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        available = getattr(torch, device.type, None)
        if available is None or not getattr(available, "is_available", lambda: False)():
            raise ValueError(f"--device {name!r} is not available on this machine; use cpu")
    return device


def load_sampling_model(path, device=None):
    """The model at ``path`` in eval mode on ``device`` (see :func:`resolve_device`); a clear error if it has
    no diffusion denoiser."""
    from ..models import load_model

    model = load_model(path, device=resolve_device(device)).eval()
    if model.unet is None:
        raise ValueError(f"{path} is an autoencoder without a diffusion denoiser; it cannot sample")
    return model


def solver_from_arguments(model, args):
    """A :class:`~infd_solve.Solver` from the flags of :func:`add_run_arguments` (checked by
    :func:`check_solver_arguments`)."""
    from ..solver import Solver

    return Solver(model, **args.solver_options, progress=not args.no_progress)


def model_path(name_or_path: str) -> Path:
    """The directory of a shipped model name (clear error if missing), or the path as given."""
    from .. import pretrained

    return pretrained.model_dir(name_or_path) if name_or_path in pretrained.NAMES else Path(name_or_path)


def observation_outputs(args, source: Path, suffix: str, inputs=()) -> tuple[Path, Path, Path]:
    """For the observation commands: the result path (default ``outputs/STEM_SUFFIX.png``), its
    ``_compare.png`` figure and the model file, all checked before any work (outputs never overwrite inputs)."""
    from ..io import refuse_overwriting_inputs

    out = output_path(args.out or Path("outputs") / f"{source.stem}_{suffix}.png")
    compare = out.with_name(f"{out.stem}_compare.png")
    model_file = model_path(args.model)
    refuse_overwriting_inputs([out, compare], [source, model_file, *inputs])
    return out, compare, model_file


def solve_observation(args, model, constraint, canvas) -> tuple:
    """Solve for one observation with the flags of :func:`add_run_arguments`, save the canvas, print its path,
    how well the model alone explained the observation, and the result's notes; returns ``(result, written
    paths, {"psnr": of the result against the observation, "model_fit": dB, "trust": share kept})``."""
    result = solver_from_arguments(model, args).solve([constraint], seed=args.seed)
    written = result.save(args.out_path, canvas, tile=args.tile)
    print(written[0])
    scores = {k: v[0] for k, v in result.report()[constraint.name].items()}
    if "model_fit" in scores:
        faded = any(c.depth is not None for c in result.corrections)
        print(f"the model alone explains the input to {scores['model_fit']:.2f} dB; the result keeps "
              f"{scores['trust']:.0%} of the model's own render (data consistency)"
              + (", fading into the smooth fill deep inside unknown regions" if faded else ""))
    print_notes(result, args.prog)
    return result, written, scores


def output_path(path) -> Path:
    """An output image path, checked before any work (see :func:`infd_solve.io.check_output`)."""
    from ..io import check_output

    return check_output(path)


def report_table(table: dict, json_path: Path, **meta) -> None:
    """Print an evaluation table (metric, value) and write it with ``meta`` as JSON, atomically."""
    import json

    from ..io import atomic_path

    width = max(map(len, table))
    print(f"\n{'metric'.ljust(width)}  value")
    for k, v in table.items():
        print(f"{k.ljust(width)}  {v:.2f}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(meta | {"metrics": table}, indent=2) + "\n")
