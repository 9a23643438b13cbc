"""The batch runner (``infd_solve.batch``, ``recipes/solve_batch.py``): job lines checked and named, rank
splitting, resuming, records and summaries, and the same bytes from 1 and 2 processes under torchrun."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infd_solve import batch
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.io import load_image, save_image, to_uint8
from infd_solve.metrics import psnr

from .helpers import REPO, load_recipe, tiny_model

QUICK = {"steps": 4, "refine_steps": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A jobs folder with a 32x32 truth, an 8x8 observation and a kernel file."""
    root = tmp_path_factory.mktemp("batch")
    save_image(scene_tensor(TEST_SEED_OFFSET + 11, 32)[0], root / "truth.png")
    save_image(scene_tensor(TEST_SEED_OFFSET + 12, 8)[0], root / "small.png")
    np.save(root / "kernel.npy", np.ones((3, 3)))
    return root


def write_jobs(root, jobs, name="jobs.jsonl"):
    path = root / name
    path.write_text("\n".join(j if isinstance(j, str) else json.dumps(j) for j in jobs) + "\n")
    return path


def sr_job(**extra):
    return {"task": "sr", "truth": "truth.png", "factor": 4, "noise_sigma": 0.05, **QUICK, **extra}


# ------------------------------------------------------------------------------------------- job lines
BAD_LINES = [
    ("not json", "not valid JSON"),
    ("[1, 2]", "a job is a JSON object"),
    ({"task": "sr"}, "give either 'image' (the observation) or 'truth'"),
    ({"task": "sr", "truth": "truth.png", "image": "small.png"}, "not both"),
    ({"task": "superres", "truth": "truth.png"}, "task must be one of 'sr', 'inpaint', 'deblur'"),
    ({"task": "sr", "truth": "truth.png", "sed": 1}, "unknown field 'sed' (did you mean 'seed'?)"),
    ({"task": "sr", "truth": "missing.png"}, "truth: no file at"),
    ({"task": "sr", "truth": "truth.png", "steps": 0}, "steps: must be an integer >= 1"),
    ({"task": "sr", "truth": "truth.png", "guidance_scale": -1}, "guidance_scale: must be a finite number >= 0"),
    ({"task": "sr", "truth": "truth.png", "seed": -3}, "seed must be an integer >= 0"),
    ({"task": "sr", "truth": "truth.png", "operator": "render"}, "operator: 'render' has no camera"),
    ({"task": "inpaint", "truth": "truth.png"}, "exactly one of 'mask'"),
    ({"task": "inpaint", "truth": "truth.png", "hole": [0.5, 0.5, 0.2, 0.9]}, "hole=[0.5, 0.5, 0.2, 0.9] is inverted"),
    ({"task": "inpaint", "image": "small.png", "missing": 0.5}, "missing: needs 'truth'"),
    ({"task": "deblur", "truth": "truth.png"}, "kernel: missing"),
    ({"layout": {"items": []}, "task": "sr"}, "not both"),
    ({"layout": "nothing.json"}, "layout: no file at"),
    ({"layout": {"items": []}, "method": "classical"}, "method: 'classical' is for tasks"),
    ({"task": "sr", "truth": "truth.png", "method": "prior", "save_unrefined": True}, "save_unrefined: only a 'dps'"),
    ({"task": "sr", "truth": "truth.png", "id": "../up"}, "id must be 1-100 letters"),
    ({"task": "sr", "truth": "truth.png", "id": "a"}, "id 'a' is already used by line 1"),
]


@pytest.mark.parametrize("line, fragment", BAD_LINES, ids=[f"bad{i}" for i in range(len(BAD_LINES))])
def test_a_bad_line_is_named(folder, line, fragment, tmp_path):
    root = tmp_path
    for name in ("truth.png", "small.png"):
        shutil.copy(folder / name, root / name)
    path = write_jobs(root, [sr_job(id="a"), "", line])  # the blank line still counts
    with pytest.raises(batch.JobError) as caught:
        batch.read_jobs(path)
    message = str(caught.value)
    assert message.startswith("jobs.jsonl line 3: ") and fragment in message, message


@pytest.mark.parametrize("line, fragment", [
    ({"layout": {"items": [{"type": "color", "color": "#zzzzzz"}]}}, "items[0].color: must be '#rrggbb'"),
    ({"task": "deblur", "truth": "truth.png", "kernel": {"type": "gaussian", "size": 8}}, "kernel.size must be odd"),
    ({"task": "deblur", "truth": "truth.png", "kernel": {"type": "gaussian", "size": 65}}, "too large for a 32x32"),
    ({"layout": {"items": [{"type": "observation", "image": "nothing.png"}]}}, "items[0].image: no file at"),
])
def test_a_job_that_cannot_be_built_is_named_before_any_work(folder, local_model, line, fragment, tmp_path):
    jobs = batch.read_jobs(write_jobs(folder, [sr_job(), line], "build.jsonl"))
    runner = batch.Runner(local_model)
    with pytest.raises(batch.JobError) as caught:
        batch.validate_jobs(jobs, runner)
    assert str(caught.value).startswith("build.jsonl line 2: ") and fragment in str(caught.value), str(caught.value)
    with pytest.raises(batch.JobError, match="no jobs"):
        batch.read_jobs(write_jobs(tmp_path, ["", "  "]))


def test_ranks_split_the_jobs_round_robin(folder):
    jobs = batch.read_jobs(write_jobs(folder, [sr_job(seed=s) for s in range(7)], "split.jsonl"))
    parts = [batch.split_jobs(jobs, r, 3) for r in range(3)]
    assert [j.line for j in parts[0]] == [1, 4, 7] and [j.line for j in parts[2]] == [3, 6]
    assert sorted(j.id for part in parts for j in part) == sorted(j.id for j in jobs)
    assert [j.id for j in jobs[:2]] == ["line1", "line2"]
    with pytest.raises(ValueError, match="rank must be an integer >= 0 <= 2"):
        batch.split_jobs(jobs, 3, 3)


# ------------------------------------------------------------------------------------------- running
def test_outputs_records_and_the_simulated_observation(folder, local_model, one_thread, tmp_path):
    jobs = batch.read_jobs(write_jobs(folder, [
        sr_job(id="sr", seed=3, method="classical"),
        {"id": "hole", "task": "inpaint", "truth": "truth.png", "hole": [0.25, 0.25, 0.75, 0.75], **QUICK},
        {"id": "blur", "task": "deblur", "truth": "truth.png", "kernel": "kernel.npy", "method": "prior", **QUICK},
        {"id": "two", "layout": {"canvas": 24, "items": [{"type": "color", "color": "#2a5caa"}]}, "batch_size": 2,
         "steps": 4},
    ], "run.jsonl"))
    runner = batch.Runner(local_model)
    batch.validate_jobs(jobs, runner)
    assert batch.run_jobs(jobs, tmp_path, runner, progress=False) == {"done": 4, "skipped": 0, "failed": 0}

    # SR from a truth: area-averaged, then noise from numpy's generator seeded with the job's seed, clamped;
    # the classical answer is its bicubic upsampling
    truth = load_image(folder / "truth.png")
    noise = np.random.default_rng(3).standard_normal((1, 3, 8, 8))
    observed = (F.adaptive_avg_pool2d(truth, 8) + 0.05 * torch.from_numpy(noise).float()).clamp(-1, 1)
    bicubic = F.interpolate(observed, size=32, mode="bicubic", align_corners=False).clamp(-1, 1)
    out = tmp_path / "jobs" / "sr"
    assert torch.equal(to_uint8(load_image(out / "output.png")), to_uint8(bicubic))
    assert torch.equal(to_uint8(load_image(out / "observation.png")), to_uint8(observed))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "done" and record["written"] == ["observation.png", "output.png"]
    assert record["metrics"]["psnr"][0] == pytest.approx(psnr(load_image(out / "output.png"), truth).item())
    assert set(record["report"]["low-res"]) == {"loss", "psnr"} and record["observation"]["noise_seed"] == 3

    hole = json.loads((tmp_path / "jobs" / "hole" / "record.json").read_text())
    mask = load_image(tmp_path / "jobs" / "hole" / "mask.png")
    assert (mask[..., 8:24, 8:24] == -1).all() and (mask[..., :8, :] == 1).all()  # the hole on the pixel grid
    assert hole["settings"]["steps"] == 4 and hole["never_guided"] == {"observation": []}
    two = json.loads((tmp_path / "jobs" / "two" / "record.json").read_text())
    assert two["written"] == ["output_0.png", "output_1.png"] and len(two["report"]["color:#2a5caa"]["loss"]) == 2

    rows = batch.merge_summary(jobs, tmp_path)
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["id"] for r in table] == ["sr", "hole", "blur", "two"] and all(r["status"] == "done" for r in table)
    assert float(table[0]["psnr"]) == pytest.approx(rows[0]["psnr"])
    assert "| sr | 1 | task | sr | classical |" in (tmp_path / "summary.md").read_text()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_resume_skips_finished_jobs_only(folder, local_model, one_thread, tmp_path):
    path = write_jobs(tmp_path, [sr_job(id="a", truth=str(folder / "truth.png")),
                                 sr_job(id="b", truth=str(folder / "truth.png"), seed=1)])
    jobs = batch.read_jobs(path)
    runner = batch.Runner(local_model)
    assert batch.run_jobs(jobs, tmp_path / "out", runner, progress=False)["done"] == 2
    record_a, record_b = (tmp_path / "out" / "jobs" / name / "record.json" for name in "ab")
    stamp = record_b.stat().st_mtime_ns
    assert batch.run_jobs(jobs, tmp_path / "out", runner, progress=False) == {"done": 0, "skipped": 2, "failed": 0}

    def rerun():
        counts = batch.run_jobs(batch.read_jobs(path), tmp_path / "out", runner, progress=False)
        assert record_b.stat().st_mtime_ns == stamp  # b, finished, is never touched
        return counts

    # a record cut short (a crash while writing one the non-atomic way) is not finished
    text = record_a.read_text()
    record_a.write_text(text[: len(text) // 2])
    assert rerun() == {"done": 1, "skipped": 1, "failed": 0} and json.loads(record_a.read_text())["status"] == "done"
    # outputs without a record (a crash before the record), or a record whose output is gone: not finished
    record_a.unlink()
    assert rerun()["done"] == 1
    (tmp_path / "out" / "jobs" / "a" / "output.png").unlink()
    assert rerun()["done"] == 1
    # a record of a failure, or of another job line (changed settings), is not finished either
    record_a.write_text(json.dumps(json.loads(record_a.read_text()) | {"status": "failed"}))
    assert rerun()["done"] == 1
    path.write_text(path.read_text().replace('"id": "a"', '"id": "a", "eta": 0.5'))
    assert rerun()["done"] == 1 and json.loads(record_a.read_text())["settings"]["eta"] == 0.5


def test_a_job_failing_while_running_is_recorded_and_the_rest_go_on(folder, local_model, one_thread, tmp_path):
    shutil.copy(folder / "truth.png", tmp_path / "gone.png")
    jobs = batch.read_jobs(write_jobs(tmp_path, [sr_job(id="gone", truth="gone.png"),
                                                 sr_job(id="fine", truth=str(folder / "truth.png"))], "fail.jsonl"))
    runner = batch.Runner(local_model)
    batch.validate_jobs(jobs, runner)
    (tmp_path / "gone.png").unlink()  # after the jobs were checked
    assert batch.run_jobs(jobs, tmp_path, runner, progress=False) == {"done": 1, "skipped": 0, "failed": 1}
    record = json.loads((tmp_path / "jobs" / "gone" / "record.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("fail.jsonl line 1: truth: no file at")
    assert not batch.is_finished(tmp_path, jobs[0], runner.fingerprint(jobs[0]))
    rows = batch.merge_summary(jobs, tmp_path)
    assert [r["status"] for r in rows] == ["failed", "done"] and rows[0]["error"] == record["error"]


def test_the_unrefined_sample_is_the_sample_without_refinement(folder, gaussian_model, one_thread, tmp_path):
    jobs = batch.read_jobs(write_jobs(folder, [
        sr_job(id="refined", steps=10, refine_steps=20, save_unrefined=True),
        sr_job(id="plain", steps=10, refine_steps=0)], "unrefined.jsonl"))
    runner = batch.Runner(gaussian_model)
    batch.run_jobs(jobs, tmp_path, runner, progress=False)
    refined, plain = tmp_path / "jobs" / "refined", tmp_path / "jobs" / "plain"
    assert (refined / "unrefined.png").read_bytes() == (plain / "output.png").read_bytes()
    record = json.loads((refined / "record.json").read_text())
    # both outputs are made consistent with the observation; the model alone explains it better after refinement
    before = record["unrefined"]["report"]["low-res"]["model_fit"][0]
    after = record["report"]["low-res"]["model_fit"][0]
    assert after > before and "metrics" in record["unrefined"]
    assert json.loads((plain / "record.json").read_text())["report"]["low-res"]["model_fit"][0] == pytest.approx(before)


def test_command_line_errors(folder, capsys, one_thread):
    solve_batch = load_recipe("solve_batch")
    path = write_jobs(folder, [sr_job(), {"task": "sr", "truth": "truth.png", "factor": 0}], "cli.jsonl")
    assert solve_batch.main([str(path), "--out", str(folder / "cli-out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "solve_batch.py: error: cli.jsonl line 2: factor must be an integer >= 1 <= 16, got 0"
    assert not (folder / "cli-out" / "jobs").exists()  # nothing ran


# ------------------------------------------------------------------------------------------- processes
@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_same_bytes_as_one(folder, tmp_path):
    model_dir = tiny_model(normalize=False, seed=1).save(tmp_path / "model")
    jobs = write_jobs(folder, [
        sr_job(id="sr", seed=1, save_unrefined=True),
        {"id": "sr-image", "task": "sr", "image": "small.png", "factor": 4, **QUICK},
        {"id": "hole", "task": "inpaint", "truth": "truth.png", "missing": 0.7, "noise_sigma": 0.05, **QUICK},
        {"id": "motion", "task": "deblur", "truth": "truth.png", "kernel": {"type": "motion", "size": 9, "length": 5},
         "noise_sigma": 0.05, "seed": 2, **QUICK},
        {"id": "prior", "task": "deblur", "truth": "truth.png", "kernel": {"type": "gaussian", "size": 9, "sigma": 1.5},
         "method": "prior", **QUICK},
        {"id": "layout", "layout": {"canvas": 40, "items": [
            {"type": "color", "color": "#2a5caa", "box": [0, 0.5, 1, 1]},
            {"type": "observation", "image": "small.png", "box": [0, 0, 0.25, 0.25]}]},
         "seed": 5, "batch_size": 2, **QUICK},
    ], "procs.jsonl")
    command = [str(REPO / "recipes" / "solve_batch.py"), str(jobs), "--model", str(model_dir), "--device", "cpu",
               "--threads", "1", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    timings = {}
    for name, launcher in [("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node", "2"])]:
        start = time.perf_counter()
        done = subprocess.run([*launcher, *command, "--out", str(tmp_path / name)], env=env, capture_output=True,
                              text=True, timeout=300)
        timings[name] = time.perf_counter() - start
        assert done.returncode == 0, done.stderr[-3000:]
    print(f"1 process {timings['one']:.1f} s, 2 processes {timings['two']:.1f} s")
    one, two = tmp_path / "one" / "jobs", tmp_path / "two" / "jobs"
    images = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(images) == 14 and images == sorted(p.relative_to(two) for p in two.rglob("*.png"))
    for image in images:
        assert (one / image).read_bytes() == (two / image).read_bytes(), image
    settings = {name: json.loads((one / name / "record.json").read_text())["settings"] for name in ("motion", "hole")}
    assert (settings["motion"]["sampler"], settings["hole"]["sampler"]) == ("daps", "dps")  # each job's own family
    ranks = set()
    for record in one.glob("*/record.json"):
        a, b = json.loads(record.read_text()), json.loads((two / record.parent.name / "record.json").read_text())
        assert a["status"] == b["status"] == "done"
        assert (a["report"], a.get("metrics"), a["settings"]) == (b["report"], b.get("metrics"), b["settings"])
        assert a["world_size"] == 1 and b["world_size"] == 2
        ranks.add(b["rank"])
    assert ranks == {0, 1}
    assert (tmp_path / "two" / "summary.csv").is_file() and (tmp_path / "two" / "summary.md").is_file()
