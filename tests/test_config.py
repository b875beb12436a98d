from pathlib import Path

import pytest

from ctai import config as configuration
from ctai.cli import main


def test_defaults_are_embedded():
    cfg = configuration.load(environ={})
    assert cfg["model"]["batch_size"] == 16
    assert cfg["plugins"]["disabled"] == []


def test_file_then_environment_override(tmp_path: Path):
    file = tmp_path / "ctai.toml"
    file.write_text('[model]\nbatch_size = 4\n[folder]\npath = "/from/file"\n')
    cfg = configuration.load(file, environ={"CTAI_MODEL__BATCH_SIZE": "8", "CTAI_PLUGINS__DISABLED": '["sc"]'})
    assert cfg["model"]["batch_size"] == 8
    assert cfg["folder"]["path"] == "/from/file"
    assert cfg["plugins"]["disabled"] == ["sc"]


def test_environment_names_the_file(tmp_path: Path):
    file = tmp_path / "ctai.toml"
    file.write_text("[model]\nbatch_size = 2\n")
    assert configuration.load(environ={"CTAI_CONFIG": str(file)})["model"]["batch_size"] == 2


def test_broken_file_is_a_clear_error(tmp_path: Path):
    file = tmp_path / "ctai.toml"
    file.write_text("[model\n")
    with pytest.raises(ValueError, match="ctai.toml"):
        configuration.load(file, environ={})


def test_ctai_config_prints_valid_toml(capsys, monkeypatch):
    import tomllib

    monkeypatch.setenv("CTAI_MODEL__BATCH_SIZE", "3")
    assert main(["config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["model"]["batch_size"] == 3
    assert printed == configuration.load()


def test_missing_config_file_exits_cleanly(capsys, tmp_path: Path):
    assert main(["--config", str(tmp_path / "nope.toml"), "config"]) == 2
    assert "nope.toml" in capsys.readouterr().err
