"""Tests for the ``tlkit`` command: finetune runs, the Lightning CLI path, errors, recipes."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tlkit.cli import main
from tlkit.cli.run_dir import new_run_dir
from tlkit.errors import TlkitError
from tlkit.recipes import recipe_path


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    dirs = [new_run_dir(tmp_path / "runs", "small-similar") for _ in range(3)]
    assert len(set(dirs)) == 3
    assert all(d.is_dir() and not any(d.iterdir()) for d in dirs)


def test_runs_started_together_share_the_runs_folder_without_tripping_each_other(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: new_run_dir(tmp_path / "runs", "r"), range(64)))
    assert len(set(dirs)) == 64
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(d.name for d in dirs)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("tlkit: error: ")
    return lines[0]


def test_bad_options_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["finetune", "--recipe", "small-simlar"]) == 2
    line = _one_error_line(capsys)
    assert "unknown recipe 'small-simlar'" in line
    assert "did you mean: small-similar" in line
    assert main(["finetune", "--epochs", "0"]) == 2
    assert "--epochs must be positive, got 0" in _one_error_line(capsys)
    assert main(["finetune", "--out", str(blocker / "run")]) == 2
    line = _one_error_line(capsys)
    assert "cannot write to output directory" in line
    assert str(blocker / "run") in line
    with pytest.raises(TlkitError, match="small-similar"):
        main(["finetune", "--recipe", "small-simlar", "--debug"])


def test_recipes_and_help(capsys):
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert any(line.split()[0] == "small-similar" for line in listed.splitlines())
    assert main(["recipes", "show", "small-similar"]) == 0
    shown = capsys.readouterr().out
    assert shown == recipe_path("small-similar").read_text()
    assert "strategy: linear_probe" in shown
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert "finetune" in usage
    assert "recipes" in usage
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    assert exit_info.value.code == 0
    assert "--recipe" in capsys.readouterr().out


def test_ddp_ranks_rerun_the_resolved_command_line(monkeypatch):
    """Lightning starts DDP ranks by running ``sys.argv`` again: while a run lasts it carries
    the recipe, stage and run directory the launching process resolved, and only then."""
    from tlkit.cli.finetune import _command_line

    argv = ["--recipe", "auto", "--data", "D"]
    resolved = ["--recipe", "small-different", "--model.strategy_args.stage", "3", "--out", "R"]
    monkeypatch.setattr(sys, "argv", ["tlkit", "--debug", "finetune", *argv])
    with _command_line(argv, resolved):
        assert sys.argv == ["tlkit", "--debug", "finetune", *argv, *resolved]
    assert sys.argv == ["tlkit", "--debug", "finetune", *argv]
    monkeypatch.setattr(sys, "argv", ["notebook", "-f", "kernel.json"])
    with _command_line(argv, resolved):
        assert sys.argv == ["notebook", "-f", "kernel.json"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Parser key \"model.head_hidden\":\n  Expected a <class 'int'>. Got value: abc",
            "invalid value for --model.head_hidden: expected int, got abc",
        ),
        (
            'Parser key "trainer.max_epochs":\n  Does not validate against any of the Union '
            "subtypes\n  Subtypes: [<class 'int'>, <class 'NoneType'>]\n  Errors:\n"
            "    - Expected a <class 'int'>\n    - Expected a <class 'NoneType'>\n"
            "  Given value type: <class 'str'>\n  Given value: x",
            "invalid value for --trainer.max_epochs: expected one of [int, NoneType], got x",
        ),
        (
            "unrecognized arguments: --model.optimiser adam",
            "unrecognized arguments: --model.optimiser adam",
        ),
    ],
)
def test_jsonargparse_errors_become_one_line(message, expected):
    from tlkit.cli.lightning import argument_error

    error = argument_error(ValueError(message))
    assert str(error) == f"{expected}; fix the option (see `tlkit finetune --help`)"
