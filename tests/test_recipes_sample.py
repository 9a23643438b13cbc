"""recipes/sample.py and recipes/bench_render.py, called in-process on the tiny official fixture."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from .helpers import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sample_cli():
    from infd_solve.cli import sample

    return sample


@pytest.fixture(scope="module")
def bench_cli():
    return load_recipe("bench_render")


def _argv(model, out, *extra):
    return ["--model", str(model), "--steps", "5", "--size", "40", "56", "-o", str(out), "--no-progress", *extra]


def _run(cli, model, out, *extra):
    return cli.run_sample(_argv(model, out, *extra))["written"]


def _no_temporaries(root: Path):
    leftovers = [p for p in root.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_sample_writes_reproducible_per_sample_seeded_pngs(sample_cli, official_path, tmp_path, capsys):
    written = _run(sample_cli, official_path, tmp_path / "a", "--num", "2", "--seed", "0")
    names = [p.name for p in written]
    assert names == ["sample_00000.png", "sample_00001.png", "grid.png"]
    printed = capsys.readouterr().out.split()
    assert printed == [str(p) for p in written]

    for p in written[:2]:
        with Image.open(p) as im:
            assert im.size == (56, 40) and im.mode == "RGB"  # PIL size is (width, height)
            lo, hi = zip(*im.getextrema())
            assert max(hi) - min(lo) > 10  # a real image, not a constant
    with Image.open(written[2]) as grid:
        assert grid.size == (2 * 56 + 2, 40)  # two columns with a 2-pixel gap
    a0, a1 = (p.read_bytes() for p in written[:2])
    assert a0 != a1

    # same seed -> identical bytes
    again = _run(sample_cli, official_path, tmp_path / "b", "--num", "2", "--seed", "0")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]

    # sample i depends only on seed + i, not on --num
    single = _run(sample_cli, official_path, tmp_path / "c", "--num", "1", "--seed", "1")
    assert [p.name for p in single] == ["sample_00001.png"]  # no grid for one sample
    assert single[0].read_bytes() == a1
    _no_temporaries(tmp_path)


def test_bad_model_path_exits_2_with_one_line_message(sample_cli, tmp_path, capsys):
    missing = tmp_path / "nope" / "model.pth"
    assert sample_cli.main(_argv(missing, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_default_model_exits_2(sample_cli, tmp_path, monkeypatch, capsys):
    from infd_solve import pretrained

    monkeypatch.setattr(pretrained, "ROOT", tmp_path / "no_pretrained")
    assert sample_cli.main(["-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "default" in err and "missing" in err and len(err.strip().splitlines()) == 1


def test_output_equal_to_model_is_refused(sample_cli, official_path, tiny_official, tmp_path, capsys):
    model_file = tmp_path / "model.pth"
    shutil.copyfile(official_path, model_file)
    before = model_file.read_bytes()
    assert sample_cli.main(_argv(model_file, model_file)) == 2
    assert "also an input" in capsys.readouterr().err
    assert model_file.read_bytes() == before

    model_dir = tiny_official.save(tmp_path / "model_dir")
    listing = sorted(p.name for p in model_dir.iterdir())
    assert sample_cli.main(_argv(model_dir, model_dir)) == 2
    assert sorted(p.name for p in model_dir.iterdir()) == listing
    _no_temporaries(tmp_path)


def test_ctrl_c_exits_130_without_half_written_files(sample_cli, official_path, tmp_path, monkeypatch, capsys):
    import infd_solve.io

    real_write, calls = infd_solve.io.write_png, []

    def interrupted_write(path, height, width, bands):
        calls.append(path)

        def first_band_then_ctrl_c():  # Ctrl-C in the middle of writing the second sample
            yield next(iter(bands))
            raise KeyboardInterrupt

        return real_write(path, height, width, first_band_then_ctrl_c() if len(calls) == 2 else bands)

    monkeypatch.setattr(infd_solve.io, "write_png", interrupted_write)
    assert sample_cli.main(_argv(official_path, tmp_path / "out", "--num", "2")) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sample_00000.png"]
    with Image.open(tmp_path / "out" / "sample_00000.png") as im:
        assert im.size == (56, 40)


def test_bench_render_smoke(bench_cli, tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    torch.set_num_threads(2)
    threads_before = torch.get_num_threads()
    result = bench_cli.main(["--model", "random", "--sizes", "64", "96", "--tile", "32", "--local",
                             "--threads", "1", "--no-progress", "--json", str(json_path)])
    out = capsys.readouterr().out
    assert "t x" in out and "mem x" in out and "peak MB" in out and "out MB" in out

    sections = result["sections"]
    assert [s["name"] for s in sections] == ["random model", "random local-renderer model"]
    for section in sections:
        # the section's final table: after "-- NAME: all rows ...", up to the next blank line
        table = out.split(f"-- {section['name']}: all rows")[1].split("\n\n")[0].splitlines()[2:]
        assert len(table) == 4
        assert section["reference_size"] == 64  # 512 not benchmarked: ratios relative to the smallest size
        rows = section["rows"]
        assert sorted((r["size"], r["mode"]) for r in rows) == [
            (64, "exact"), (64, "official"), (96, "exact"), (96, "official")]
        for r in rows:
            assert r["seconds"] > 0 and r["peak_mb"] >= 0 and r["total_peak_mb"] > 0
            assert r["out_mb"] == pytest.approx(3 * r["size"] ** 2 * 4 / 2**20)
            assert r["pixel_ratio"] == pytest.approx((r["size"] / 64) ** 2)
            if r["size"] == 64:
                assert r["time_ratio"] == 1.0 and r["mem_ratio"] == 1.0
            # the final table prints this row with its ratios
            line = f"{r['size']:>6}  {r['mode']:<8}  {r['seconds']:>9.2f}"
            match = [ln.split() for ln in table if ln.startswith(line)]
            assert len(match) == 1 and len(match[0]) == 8, (line, table)
            assert float(match[0][5]) == pytest.approx(r["time_ratio"], abs=0.006)
            assert float(match[0][7]) == pytest.approx(r["pixel_ratio"], abs=0.006)
    saved = json.loads(json_path.read_text())
    # the JSON holds the same rows (pytest.approx compares flat dicts, not lists of dicts)
    assert len(saved["sections"][1]["rows"]) == len(sections[1]["rows"])
    for saved_row, row in zip(saved["sections"][1]["rows"], sections[1]["rows"]):
        assert saved_row == pytest.approx(row)
    assert torch.get_num_threads() == threads_before  # --threads does not leak out of main()


def test_bench_render_bad_model_exits_2(bench_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_cli.main(["--model", str(tmp_path / "missing.pth"), "--sizes", "64", "--no-progress"])
    assert e.value.code == 2
    assert "missing.pth" in capsys.readouterr().err
