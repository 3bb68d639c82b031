"""Library errors name arguments; the command line shows them as the flags of the failed command."""

from __future__ import annotations

import pytest

from tlkit.cli.flags import as_flags
from tlkit.errors import TlkitError


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("finetune", "pass --weights FILE or --model.pretrained false"),
        ("advise", "pass --weights FILE or --model.pretrained false"),
        ("fit", "pass --model.weights FILE or --model.pretrained false"),
    ],
)
def test_own_commands_use_short_flags_and_lightning_ones_the_class_prefix(command, expected):
    assert as_flags("pass `weights=FILE` or `pretrained=False`", command) == expected


def test_data_and_trainer_arguments_get_their_prefixes():
    message = "set `max_epochs=N` or `max_steps=N`; pass `cache_features=False`"
    assert as_flags(message, "fit") == (
        "set --trainer.max_epochs N or --trainer.max_steps N; pass --data.cache_features false"
    )
    assert as_flags(message, "finetune").startswith("set --epochs N or --trainer.max_steps N")


def test_switches_are_named_without_values():
    assert as_flags("pass `trust=True` if you trust it", "predict") == (
        "pass --trust-weights if you trust it"
    )
    assert as_flags("remove them, or `strict=False` to skip them", "evaluate") == (
        "remove them, or drop --strict to skip them"
    )


def test_unknown_names_and_plain_text_are_left_alone():
    assert (
        as_flags("`colour=red` is not an argument", "finetune") == "`colour=red` is not an argument"
    )
    assert (
        as_flags("shots must be positive, got -1", "finetune") == "shots must be positive, got -1"
    )


def test_the_command_line_prints_the_flag_the_library_error_names(tmp_path, capsys):
    from tlkit.cli import main
    from tlkit.data import TransferDataModule

    with pytest.raises(TlkitError, match="`shots=5`"):
        TransferDataModule("demo", shots=0)
    argv = ["advise", "--data", "demo", "--backbone", "test_resnet"]
    code = main([*argv, "--weights", str(tmp_path / "nope.pth")])
    assert code == 2
    line = capsys.readouterr().err.strip()
    missing = tmp_path / "nope.pth"
    assert line == f"tlkit: error: weights file {missing} does not exist; check --weights FILE"
