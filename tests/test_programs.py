"""The installed commands as programs: each run through its console script in a subprocess, as a shell, make or
a scheduler runs it. Exit status 0 done, 2 bad input, 3 a constraint never guided, 130 Ctrl-C; results on
stdout; on stderr nothing but ``PROG: note: ...`` / ``PROG: error: ...`` lines and progress bars.

The console scripts are looked for next to the running Python (a virtualenv's ``bin/``, where ``pip install -e
.`` puts them, as in ``.ci/run``); a test that needs one skips, saying so, where it is not installed. Layout item
types of the user's own (``--import``, entry points) are tested here too: a subprocess starts with a fresh
registry, so what it finds it found by itself.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .helpers import REPO, load_recipe, tiny_model

COMMANDS = ("infd-layout", "infd-sr", "infd-inpaint", "infd-sample")
MODULES = {"infd-layout": "layout", "infd-sr": "super_resolution", "infd-inpaint": "inpaint", "infd-sample": "sample"}
# A device the commands must refuse on this machine: the README's "cuda" where there is no GPU.
MISSING_DEVICE = "cuda:99" if torch.cuda.is_available() else "cuda"
BRIGHTNESS = '''
from infd_solve import Constraint


class Brightness(Constraint):
    layout_type = "{kind}"

    def __init__(self, target, box=None, **kwargs):
        super().__init__(box=box, size=(8, 8), **kwargs)
        self.target = target

    def loss(self, patch):
        return (patch.mean((1, 2, 3)) - self.target) ** 2
'''


def console_script(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.skip(f"the console script {name} is not installed next to {sys.executable} (pip install -e . "
                    "installs it)")
    return path


def run_program(command, *args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``command`` (a console script's name, or an argv list) run to its end, with one torch thread."""
    argv = [str(console_script(command))] if isinstance(command, str) else [str(a) for a in command]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*argv, *map(str, args)], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(stderr: str, prog: str) -> list[str]:
    """The ``PROG: error:`` lines of ``stderr``, after checking that every other line is a note or a progress
    bar (tqdm redraws its bar after carriage returns): no Python object, no traceback."""
    pieces = [p for p in re.split(r"[\r\n]", stderr) if p.strip()]
    strays = [p for p in pieces if not p.startswith((f"{prog}: note: ", f"{prog}: error: ")) and "%|" not in p]
    assert strays == [], stderr
    return [p for p in pieces if p.startswith(f"{prog}: error: ")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny saved model, a 16x16 photo and a one-item layout."""
    folder = tmp_path_factory.mktemp("programs")
    tiny_model(normalize=False).save(folder / "model")
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "small.png")
    layout = {"canvas": 32, "items": [{"type": "color", "color": "#ffffff", "box": [0, 0, 0.5, 1]}]}
    (folder / "color.json").write_text(json.dumps(layout))
    return folder


def small_run(command: str, inputs: Path, out: Path) -> tuple[list, list[str], str]:
    """A quick run of ``command`` on the tiny model: its arguments, the files it writes, a line it prints."""
    model = ["--model", inputs / "model", "--steps", "2", "--no-progress"]
    return {
        "infd-layout": ([inputs / "color.json", "-o", out / "scene.png", *model],
                        ["scene.png", "scene_layout.png", "scene_losses.png"],
                        "color.json: 1 constraint, canvas 32x32"),
        "infd-sr": ([inputs / "small.png", "--upscale", "2", "--refine-steps", "0", "-o", out / "big.png", *model],
                    ["big.png", "big_compare.png"], "small.png: 16x16 -> 32x32 (x2)"),
        "infd-inpaint": ([inputs / "small.png", "--polygon", "0.25,0.25 0.75,0.25 0.5,0.75", "--refine-steps", "0",
                          "-o", out / "filled.png", *model], ["filled.png", "filled_compare.png"], "known-region PSNR"),
        "infd-sample": (["--num", "2", "--size", "32", "-o", out / "samples", *model],
                        ["sample_00000.png", "sample_00001.png", "grid.png"], str(out / "samples" / "grid.png")),
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_successful_run_exits_0_and_prints_only_its_results(command, inputs, tmp_path):
    argv, outputs, line = small_run(command, inputs, tmp_path)
    done = run_program(command, *argv)
    assert done.returncode == 0, done.stderr
    assert error_lines(done.stderr, command) == []
    assert line in done.stdout and "{" not in done.stdout  # results as text, not a Python dict
    written = [Path(ln) for ln in done.stdout.splitlines() if ln.startswith(str(tmp_path))]
    assert sorted(p.name for p in written) == sorted(outputs) and all(p.is_file() for p in written)


def test_bad_input_exits_2_with_one_line_before_any_output(inputs, tmp_path):
    argv, _, _ = small_run("infd-sr", inputs, tmp_path)
    done = run_program("infd-sr", *argv, "--device", MISSING_DEVICE)
    assert done.returncode == 2
    (error,) = error_lines(done.stderr, "infd-sr")
    assert f"--device {MISSING_DEVICE!r}" in error and "Traceback" not in done.stderr
    assert done.stdout == "" and list(tmp_path.iterdir()) == []  # checked before the header line and any file


@pytest.mark.parametrize("command", COMMANDS)
def test_every_argument_is_checked_before_anything_is_printed(command, inputs, tmp_path, capsys):
    """In-process (the exit status through each console script is the test above and the successful runs)."""
    import importlib

    module = importlib.import_module(f"infd_solve.cli.{MODULES[command]}")
    argv, _, _ = small_run(command, inputs, tmp_path)
    assert module.main([*map(str, argv), "--device", MISSING_DEVICE]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_import_brings_item_types_from_a_file_and_one_that_never_guides_exits_3(inputs, tmp_path):
    """A user's constraint file with two types, one whose loss is never finite: the sample it is in goes
    unguided (test_hardening), the outputs are written, and the run exits with 3."""
    (tmp_path / "my_constraints.py").write_text(
        BRIGHTNESS.format(kind="test-brightness-file") + "\n\nimport math\nfrom infd_solve.constraints import "
        "ColorMatch\n\n\nclass NeverGuides(ColorMatch):\n    layout_type = 'test-never-guides'\n\n"
        "    def loss(self, patch):\n        return super().loss(patch) * math.inf\n")
    layout = tmp_path / "mine.json"
    layout.write_text(json.dumps({"canvas": 32, "items": [
        {"type": "test-brightness-file", "target": 0.3, "box": [0, 0, 0.5, 0.5]},
        {"type": "test-never-guides", "color": "#ffffff"}]}))
    done = run_program("infd-layout", layout, "--import", tmp_path / "my_constraints.py", "--model",
                       inputs / "model", "--steps", "2", "-o", tmp_path / "out.png", "--no-progress")
    assert done.returncode == 3
    (error,) = error_lines(done.stderr, "infd-layout")
    assert "guidance never happened for " in error and "'color:#ffffff' (samples [0])" in error
    assert re.search(r"\[0\] Brightness +box=\(0.000, 0.000, 0.500, 0.500\) +weight 1 +loss \d", done.stdout)
    assert all((tmp_path / name).is_file() for name in ("out.png", "out_layout.png", "out_losses.png"))


def test_ctrl_c_during_the_heavy_imports_exits_130_with_one_line(inputs, tmp_path):
    """SIGINT once torch is being imported, inside the command: with Python reporting each finished import on
    stderr, the test knows when (a signal during Python's own start-up, before any of the program runs, is
    Python's to handle)."""
    argv, _, _ = small_run("infd-layout", inputs, tmp_path)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    command = [str(console_script("infd-layout")), *map(str, argv)]
    # SIGINT as a terminal delivers it: a runner started in the background (`cmd &`) passes it on ignored
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as process:
        before = []
        for line in process.stderr:
            before.append(line)
            if re.search(r"\|\s+torch(\.\S+)?$", line.rstrip()):
                break
        else:
            pytest.fail("torch was never imported: " + "".join(before)[-2000:])
        process.send_signal(signal.SIGINT)
        out, after = process.communicate(timeout=300)
    stderr = "".join(before) + after
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("import time:")]
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert lines == ["infd-layout: error: interrupted; every file written so far is complete, none is half-written"]
    assert out == ""


@pytest.mark.slow
def test_the_readme_main_job_exits_0(tmp_path):
    done = run_program("infd-layout", REPO / "recipes" / "examples" / "landscape_2048.json", "-o",
                       tmp_path / "landscape.png", cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert error_lines(done.stderr, "infd-layout") == []
    with Image.open(tmp_path / "landscape.png") as image:
        assert image.size == (2048, 2048)
    assert (tmp_path / "landscape_layout.png").is_file() and (tmp_path / "landscape_losses.png").is_file()


# ------------------------------------------------------------------------------ help and the other programs
@pytest.mark.parametrize("module", ["layout", "super_resolution", "inpaint", "sample"])
def test_help_is_plain_text(module):
    import importlib

    command = importlib.import_module(f"infd_solve.cli.{module}")
    text = command.build_parser().format_help()
    assert f"\n{command.PROG}: " in text  # the description names the command, without markup
    assert "``" not in text and not re.search(r":\w+:`", text) and "::" not in text
    assert "Usage:\n" in text and f"    {command.PROG} " in text  # the usage examples, kept readable


def test_the_readme_gpu_benchmark_without_that_gpu_is_a_one_line_error(capsys):
    bench = load_recipe("bench_guidance")
    status = bench.main(["--official", "--device", MISSING_DEVICE, "--sizes", "1024", "2048", "--batch-sizes", "1",
                         "16"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.startswith(f"bench_guidance.py: error: --device {MISSING_DEVICE!r}")
    assert len(captured.err.splitlines()) == 1


# ------------------------------------------------------------------------------ the user's own constraints
def _bright_layout(folder: Path, kind: str) -> Path:
    path = folder / "bright.json"
    path.write_text(json.dumps({"canvas": 32, "items": [{"type": kind, "target": 0.3, "box": [0, 0, 0.5, 0.5]}]}))
    return path


def test_infd_layout_finds_item_types_declared_as_entry_points(inputs, tmp_path):
    """A package that declares ``[project.entry-points."infd_solve.constraints"]``, installed: here its module and
    ``.dist-info`` (what pip writes) on the Python path."""
    site = tmp_path / "site"
    (site / "bright_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "bright_plugin.py").write_text(BRIGHTNESS.format(kind="test-brightness-entry-point"))
    (site / "bright_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: bright-plugin\nVersion: 1.0\n")
    (site / "bright_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[infd_solve.constraints]\ntest-brightness-entry-point = bright_plugin:Brightness\n")
    layout = _bright_layout(tmp_path, "test-brightness-entry-point")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    done = run_program("infd-layout", layout, "--model", inputs / "model", "--steps", "2", "-o", tmp_path / "out.png",
                       "--no-progress", env={"PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    assert "[0] Brightness " in done.stdout


def test_solve_batch_imports_item_types_from_a_module(inputs, tmp_path):
    (tmp_path / "batch_constraints.py").write_text(BRIGHTNESS.format(kind="test-brightness-batch"))
    jobs = tmp_path / "jobs.jsonl"
    layout = {"canvas": 32, "steps": 2, "items": [{"type": "test-brightness-batch", "target": 0.3}]}
    jobs.write_text(json.dumps({"id": "bright", "layout": layout}) + "\n")
    done = run_program([sys.executable, REPO / "recipes" / "solve_batch.py"], jobs, "--out", tmp_path / "out",
                       "--model", inputs / "model", "--import", "batch_constraints", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "jobs" / "bright" / "record.json").read_text())
    assert record["status"] == "done" and "Brightness" in record["report"]


def test_a_type_nobody_defined_says_how_to_bring_one(tmp_path):
    from infd_solve.layout import LayoutError, parse_layout

    with pytest.raises(LayoutError, match=r"items\[0\].type: unknown type 'test-nowhere'.*--import MODULE.*"
                                          r"'infd_solve.constraints' entry point"):
        parse_layout(_bright_layout(tmp_path, "test-nowhere"))


def test_a_broken_entry_point_is_a_one_line_layout_error(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "broken_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "broken_plugin.py").write_text("import a_module_nobody_has\n")
    (site / "broken_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1\n")
    (site / "broken_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[infd_solve.constraints]\ntest-broken = broken_plugin:Broken\n")
    monkeypatch.syspath_prepend(str(site))
    from infd_solve.layout import LayoutError, parse_layout

    with pytest.raises(LayoutError, match=r"items\[0\].type: 'test-broken' is declared by the entry point "
                                          r"test-broken = broken_plugin:Broken, which cannot be imported: "
                                          r"ModuleNotFoundError: No module named 'a_module_nobody_has'$"):
        parse_layout({"items": [{"type": "test-broken"}]})


def test_conversion_warnings_become_notes_and_an_interrupted_imports_unclosed_file_does_not(capsys):
    """Ctrl-C while torch reads a ``.pyc`` leaves that file to the garbage collector, whose ResourceWarning
    must not add a line to the one-line error (a real flake of the test above)."""
    import warnings

    from infd_solve.cli import user_errors

    with pytest.raises(SystemExit) as ended, user_errors("infd-layout"):
        warnings.warn("image mode P converted to RGB")
        warnings.warn("unclosed file <_io.FileIO name='x.pyc'>", ResourceWarning)
        raise KeyboardInterrupt
    assert ended.value.code == 130
    assert capsys.readouterr().err.splitlines() == [
        "infd-layout: note: image mode P converted to RGB",
        "infd-layout: error: interrupted; every file written so far is complete, none is half-written"]
