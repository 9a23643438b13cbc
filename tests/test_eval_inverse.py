"""``recipes/eval_inverse.py`` end to end on a tiny model: the protocol's jobs, the table, figures, resuming."""

import json
import math

import pytest
import torch
import torchvision

from .helpers import load_recipe, save_tiny_clip, tiny_model


@pytest.mark.slow
def test_benchmark_on_a_tiny_model(tmp_path, one_thread, monkeypatch):
    model_dir = tiny_model(normalize=False, seed=1).save(tmp_path / "model")
    clip_dir = save_tiny_clip(tmp_path / "clip")
    out = tmp_path / "out"
    argv = ["--scenes", "1", "--size", "64", "--steps", "4", "--refine-steps", "2", "--samplers", "dps", "daps",
            "--model", str(model_dir),
            "--clip", str(clip_dir), "--out", str(out), "--no-progress", "--examples", "1", "--lpips-net", "alex"]
    evaluate = load_recipe("eval_inverse")
    table = evaluate.main(argv)

    jobs = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == 5 * 1 * 4 and all(j["noise_sigma"] == 0.05 for j in jobs)
    # equal denoiser evaluations: DAPS takes 2 per level
    assert {j["steps"] for j in jobs if j.get("sampler") == "daps"} == {2}
    assert {j["steps"] for j in jobs if j.get("sampler") != "daps"} == {4}
    for job in jobs:  # the protocol, scaled from 256 to 64
        if "hole" in job:
            left, top, right, bottom = (v * 64 for v in job["hole"])
            assert right - left == bottom - top == 32 and min(left, top) >= 4 and max(right, bottom) <= 60
        if job.get("kernel", {}).get("type") == "gaussian":
            assert job["kernel"] == {"type": "gaussian", "size": 17, "sigma": 0.75}
        if job.get("kernel", {}).get("type") == "motion":
            assert job["kernel"]["length"] == 31 / 4 and job["kernel"]["seed"] == job["seed"]
    assert {j["missing"] for j in jobs if "missing" in j} == {0.7}
    assert {j["factor"] for j in jobs if j["task"] == "sr"} == {4}

    rows = ["classical", "prior", "dps, no refinement", "dps", "daps, no refinement", "daps"]
    assert [(r["task"], r["method"]) for r in table[:6]] == [("sr4", m) for m in rows]
    assert len(table) == 30 and all(r["images"] == 1 for r in table)
    for r in table:  # one 64-pixel image is one crop: no patch FD (test_frechet tests it)
        assert all(math.isfinite(r[k]) for k in ("psnr", "ssim", "seconds")) and r["lpips"] is r["patch FD"] is None
    markdown = (out / "table.md").read_text()
    assert "LPIPS not measured: LPIPS backbone weights alexnet" in markdown and "| sr4 | dps |" in markdown
    assert "patch FD not measured: fewer than 2 crops" in markdown
    assert sorted(p.name for p in out.glob("examples_*.png")) == [f"examples_{t}.png" for t in sorted(evaluate.TASKS)]

    # a second run reuses every job; with a backbone file on disk LPIPS is measured
    torch.manual_seed(0)
    backbone = tmp_path / "alexnet-owt-7be5be79.pth"  # random weights stand in for the ImageNet file
    torch.save({f"features.{k}": v for k, v in torchvision.models.alexnet().features.state_dict().items()}, backbone)
    monkeypatch.setenv("INFD_LPIPS_BACKBONE", str(backbone))
    again = evaluate.main(argv)
    assert json.loads((out / "eval.json").read_text())["jobs"] == {"done": 0, "skipped": 20, "failed": 0}
    assert [r["psnr"] for r in again] == [r["psnr"] for r in table]
    assert all(r["lpips"] is not None and r["lpips"] >= 0 for r in again)
    assert "| LPIPS ↓ |" in (out / "table.md").read_text() and "LPIPS (alex)" in (out / "table.md").read_text()
