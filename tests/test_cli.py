"""The `untwine` command itself: help, version and completion without the heavy imports."""
from __future__ import annotations

import subprocess
import sys

import pytest

from untwine import cli

HEAVY = ("torch", "numpy", "matplotlib", "pandas", "sklearn", "lightning")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_help_and_version_import_nothing_heavy(argv):
    # shell completion and a quick look at the commands must not wait seconds for torch
    code = (f"import sys\nfrom untwine import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_the_stub_help_lines_are_the_areas_own():
    full = cli.build_parser("*")
    sub = next(a for a in full._actions if a.dest == "command")
    own = {choice.dest: choice.help for choice in sub._choices_actions}
    assert set(own) == set(cli.COMMANDS)
    for name, (_, help_line) in cli.COMMANDS.items():
        assert own[name] == help_line, name


def test_a_command_loads_its_area_only_and_still_parses(capsys):
    parser = cli.build_parser("evaluate")
    args = parser.parse_args(["evaluate", "codes.npz", "--metrics", "mig"])
    assert args.metrics == "mig" and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--no-such-option"])


def test_completion_script_names_commands_and_options(capsys):
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for word in ("train", "tabular", "--run-dir", "--metrics", "--resume"):
        assert word in script, word
    with pytest.raises(SystemExit):
        cli.main(["completion", "fish"])


def test_evaluate_on_a_device_this_machine_lacks_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    run.mkdir()
    # checked before the run is read (this folder is no run: that error would come second)
    for device, says in (("cuda", "0 CUDA device(s) for torch"), ("cuda:3", "0 CUDA device(s) for torch"),
                         ("tpu", "is not a torch device")):
        assert cli.main(["evaluate", str(run), "--device", device]) == 2
        err = capsys.readouterr().err
        assert says in err and ("use --device cpu" in err or "use cpu, cuda" in err), err
