"""Bad checkpoints fail with messages that say what is wrong; unsafe pickles run nothing."""

import json

import pytest
import torch

import infd_solve
from infd_solve import CheckpointError, UnsafeCheckpointError


@pytest.fixture(scope="module")
def official_ckpt(official_path):
    return torch.load(official_path, weights_only=True)


def test_missing_file_names_path_and_how_to_supply(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pth.*local .pth path") as info:
        infd_solve.load_model(tmp_path / "nothere.pth")
    assert isinstance(info.value, FileNotFoundError)  # a missing file, like any other


def test_every_missing_checkpoint_is_a_checkpoint_error(tmp_path, monkeypatch):
    """Bad input is a ValueError (README): a missing checkpoint too, wherever it is looked for."""
    from infd_solve import pretrained
    from infd_solve.checkpoints import load_torch_file
    from infd_solve.clip import load_clip

    (tmp_path / "empty").mkdir()
    cases = [(infd_solve.load_model, tmp_path / "empty", "config.json not found"),
             (load_clip, tmp_path / "empty", "open_clip_config.json not found"),
             (load_clip, tmp_path / "none", "no CLIP weights at"),
             (load_torch_file, tmp_path / "none.pt", "checkpoint not found")]
    monkeypatch.setattr(pretrained, "ROOT", tmp_path / "no_pretrained")
    cases += [(load, "default", "shipped .* 'default' is missing") for load in (infd_solve.load_model, load_clip)]
    for load, path, message in cases:
        with pytest.raises(CheckpointError, match=message) as info:
            load(path)
        assert isinstance(info.value, FileNotFoundError)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pth is empty \(0 bytes\)"):
        infd_solve.load_model(tmp_path / "empty.pth")


def test_truncated_file(tmp_path, official_path):
    data = official_path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth: truncated or corrupt"):
        infd_solve.load_model(tmp_path / "cut.pth")


def test_garbage_file(tmp_path):
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(CheckpointError, match="noise.pth") as info:
        infd_solve.load_model(tmp_path / "noise.pth")
    assert not isinstance(info.value, UnsafeCheckpointError)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))  # torch blocks the whole module, with another message


def _code_carrying_files(tmp_path, marker):
    """Every way a file can carry code: torch zip checkpoints and raw pickles of each protocol."""
    import pickle

    files = []
    for name, payload in (("open", _Payload(str(marker))), ("system", _System(marker))):
        torch.save({"model": payload}, tmp_path / f"{name}.pth")
        files.append(tmp_path / f"{name}.pth")
        for protocol in (0, 2, 4, 5):
            path = tmp_path / f"{name}_raw{protocol}.pt"
            path.write_bytes(pickle.dumps({"model": payload}, protocol=protocol))
            files.append(path)
    return files


def test_every_code_carrying_file_is_refused_as_unsafe_and_not_executed(tmp_path, monkeypatch):
    from infd_solve.clip import load_clip
    from infd_solve.losses import load_lpips

    marker = tmp_path / "executed"
    for path in _code_carrying_files(tmp_path, marker):
        monkeypatch.setenv("INFD_LPIPS_BACKBONE", str(path))
        for load in (infd_solve.load_model, lambda p: load_clip(p, model_name="ViT-B-32"), lambda p: load_lpips()):
            with pytest.raises(UnsafeCheckpointError, match=f"{path.name}: its pickle references Python code") as e:
                load(path)
            assert "weights_only" not in str(e.value)  # never the advice to disable the safe loader
    assert not marker.exists()


def test_unsafe_file_message_names_the_kind_of_file(tmp_path):
    from infd_solve.clip import load_clip

    path = tmp_path / "code.pth"
    torch.save({"model": _Payload(str(tmp_path / "executed"))}, path)
    with pytest.raises(UnsafeCheckpointError, match="could run; an official INFD checkpoint file holds only"):
        infd_solve.load_model(path)
    with pytest.raises(UnsafeCheckpointError, match="could run; a CLIP weights file holds only"):
        load_clip(path, model_name="ViT-B-32")


def test_foreign_checkpoints(tmp_path, official_ckpt):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"not an official INFD checkpoint.*\['state_dict'\]"):
        infd_solve.load_model(tmp_path / "other.pth")
    torch.save({"model": {"name": "vqgan", "args": {}, "sd": {}}}, tmp_path / "vqgan.pth")
    with pytest.raises(CheckpointError, match="not an INFD model \\(model name 'vqgan'"):
        infd_solve.load_model(tmp_path / "vqgan.pth")


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path, official_ckpt):
    model = dict(official_ckpt["model"])
    sd = dict(model["sd"])
    del sd["renderer.net.conv_out.bias"]
    sd["renderer.net.extra.weight"] = torch.zeros(1)
    sd["encoder.1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save({**official_ckpt, "model": {**model, "sd": sd}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        infd_solve.load_model(tmp_path / "bad.pth")
    msg = str(info.value)
    assert "bad.pth" in msg
    assert "missing keys: renderer.conv_out.bias" in msg
    assert "unexpected keys: renderer.net.extra.weight" in msg
    assert "encoder.quant_conv.weight (3, 3, 3, 3) != (3, 3, 1, 1)" in msg


def test_different_architecture_args(tmp_path, official_ckpt):
    model = json.loads(json.dumps(official_ckpt["model"]["args"]))
    model["renderer"]["args"]["net"]["args"]["hidden_channels"] = 64
    torch.save({**official_ckpt, "model": {**official_ckpt["model"], "args": model}}, tmp_path / "arch.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        infd_solve.load_model(tmp_path / "arch.pth")


def test_our_format_errors(tmp_path, normalized_model):
    target = tmp_path / "m"
    normalized_model.save(target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        infd_solve.load_model(target)

    normalized_model.save(target)
    config = json.loads((target / "config.json").read_text())
    config["renderer"]["hidden_channels"] = 64
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model.safetensors: weights do not match the model config"):
        infd_solve.load_model(target)

    (target / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        infd_solve.load_model(target)

    (target / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json not found"):
        infd_solve.load_model(target)


def test_training_states_resume_safely(tmp_path, capsys):
    from pathlib import Path

    from infd_solve.checkpoints import UnsafeCheckpointError
    from infd_solve.training import load_train_state, save_train_state

    path = tmp_path / "state.pt"
    assert load_train_state(path, resume=True) is None
    assert "starting from scratch" in capsys.readouterr().out
    save_train_state(path, model={"w": torch.ones(2)}, step=3, args={"out": Path("runs/x"), "lr": 0.1})
    assert load_train_state(path, resume=False) is None  # left alone, and said so
    assert "ignoring existing" in capsys.readouterr().out
    state = load_train_state(path, resume=True, must_match={"step": 3})
    assert state["step"] == 3 and state["args"] == {"out": "runs/x", "lr": 0.1}
    with pytest.raises(ValueError, match="written by another run"):
        load_train_state(path, resume=True, must_match={"step": 4})
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "model": _System(marker)}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_train_state(path, resume=True)
    assert not marker.exists()
