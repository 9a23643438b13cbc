"""The README's two set-up commands are the ones CI runs and the files they name exist."""

import re

from .helpers import REPO

README = (REPO / "README.md").read_text()
CI = (REPO / ".ci" / "run").read_text()


def _commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_in_a_fresh_virtualenv():
    test_command = next(c for c in _commands() if "pytest" in c)
    assert test_command in CI.splitlines()
    assert "python3 -m venv" in CI and "mktemp -d" in CI  # nothing reused from the machine's Python


def test_ci_installs_what_the_readme_installs_first():
    setup = next(c for c in _commands() if "layout_to_image.py" in c)
    torch_pin = setup.split("&&")[0].strip()
    assert torch_pin.startswith("pip install torch==") and torch_pin in CI


def test_the_main_job_names_files_that_exist():
    setup = next(c for c in _commands() if "layout_to_image.py" in c)
    for path in re.findall(r"(recipes/\S+\.(?:py|json))", setup):
        assert (REPO / path).is_file(), path


def test_the_commands_table_names_every_file_a_command_writes():
    rows = {line.split("`")[1].split()[0]: line for line in README.splitlines() if line.startswith("| `infd-")}
    assert {"infd-layout", "infd-sr", "infd-inpaint", "infd-sample"} <= set(rows)
    for command, files in {"infd-layout": ["out_layout.png", "out_losses.png"], "infd-sr": ["out_compare.png"],
                           "infd-inpaint": ["out_compare.png"]}.items():
        assert all(f"`{name}`" in rows[command] for name in files), rows[command]
