"""`tlkit pretrain` trains a backbone from scratch and writes weights `--weights` accepts."""

from __future__ import annotations

import pytest

from tlkit.cli import main


def test_pretrain_needs_an_output_directory(capsys):
    assert main(["pretrain", "--data", "demo"]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_pretrain_help(flag, capsys):
    assert main(["pretrain", flag]) == 0
    assert "backbone.safetensors" in capsys.readouterr().out
