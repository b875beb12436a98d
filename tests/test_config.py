import re
import tomllib
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
    monkeypatch.setenv("CTAI_MODEL__BATCH_SIZE", "3")
    assert main(["config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["model"]["batch_size"] == 3
    assert printed == configuration.load()


def test_missing_config_file_exits_cleanly(capsys, tmp_path: Path):
    assert main(["--config", str(tmp_path / "nope.toml"), "config"]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_every_mistake_is_named_with_what_was_meant(tmp_path: Path, capsys):
    """A misspelt section or setting, a value of the wrong kind or below zero: refused when the
    configuration is loaded, each named, rather than ignored or failing later in a service."""
    file = tmp_path / "ctai.toml"
    file.write_text('[modle]\nbatch_size = 4\n[listener]\nenabeld = true\nport = "104"\n'
                    '[inputs]\ngate = "yes"\ngate_threshold = 1\n')
    assert main(["--config", str(file), "config"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"ctai: configuration file {file}:",
        '  [inputs] gate = "yes": expected true or false, such as true',
        '  [listener] port = "104": expected a whole number, such as 11112',
        "  no setting enabeld in [listener] (did you mean enabled?)",
        "  no section [modle] (did you mean [model]?); a plugin's own go under [plugins.NAME]",
    ]
    with pytest.raises(ValueError, match=r"\[model\] batch_size = -4: expected a number not below 0"):
        configuration.load(environ={"CTAI_MODEL__BATCH_SIZE": "-4"})
    with pytest.raises(ValueError, match=r"\[worker\] threads = 2.5: expected a whole number"):
        configuration.load(environ={"CTAI_WORKER__THREADS": "2.5"})
    with pytest.raises(ValueError, match=r'\[inputs\] intended_use = "maybe": expected one of withhold, flag, off\n'
                                         r'  \[queue\] backend = "mongo": expected one of sqlite, redis'):
        configuration.load(environ={"CTAI_QUEUE__BACKEND": "mongo", "CTAI_INPUTS__INTENDED_USE": "maybe"})


def test_environment_values_take_their_settings_kind():
    """Text settings keep the variable's text (a password or AE title of digits); the others are
    read as TOML values."""
    cfg = configuration.load(environ={"CTAI_ORTHANC__PASSWORD": "12345", "CTAI_LISTENER__AE_TITLE": "0042",
                                      "CTAI_WORKER__RETRY_DELAY": "3", "CTAI_INPUTS__GATE": "false"})
    assert cfg["orthanc"]["password"] == "12345" and cfg["listener"]["ae_title"] == "0042"
    assert cfg["worker"]["retry_delay"] == 3 and cfg["inputs"]["gate"] is False


def test_a_plugins_own_settings_go_under_plugins(tmp_path: Path):
    """They are the plugin's to check; ``ctai config`` prints them back."""
    file = tmp_path / "ctai.toml"
    file.write_text('[plugins]\ndisabled = ["sc"]\n[plugins.my_ris]\nurl = "https://ris.example"\nretries = 3\n')
    cfg = configuration.load(file, environ={})
    assert cfg["plugins"]["my_ris"] == {"url": "https://ris.example", "retries": 3}
    assert tomllib.loads(configuration.to_toml(cfg)) == cfg


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("MODEL__BATCH_SIZE", "0", "at least 1"),
    ("WORKER__THREADS", "0", "at least 1"),
    ("INPUTS__GATE_THRESHOLD", "5", "a probability, at most 1"),
    ("LISTENER__PORT", "70000", "a port number, at most 65535"),
    ("INPUTS__INTENDED_AGES", "[5, 1]", "[] or the youngest and oldest age in years, such as [1, 5]"),
    ("INPUTS__INTENDED_AGES", '["a", "b"]', "[] or the youngest and oldest age in years, such as [1, 5]"),
    ("FHIR__BASE_URL", "fhir.hospital.local/fhir", "nothing, or a URL starting http:// or https://"),
    ("QUEUE__URL", "localhost:6379", "nothing, or a URL starting redis:// or rediss:// or unix://"),
    ("CSTORE__AE_TITLE", "HOSPITAL_MAIN_PACS", "an AE title: 1 to 16 ASCII characters"),
    ("CSTORE__CALLING_AE_TITLE", "CT\\AI", "an AE title: 1 to 16 ASCII characters"),
    ("LISTENER__AE_TITLE", "  ", "an AE title: 1 to 16 ASCII characters"),
    ("ORTHANC__AET", "", "an AE title: 1 to 16 ASCII characters"),
    ("HL7__PROCESSING_ID", "Production", "P, D or T (HL7 table 0103)"),
    ("LISTENER__ALLOWED_AETS", '["MODALITY", "R\u00d6NTGEN"]', "a list of AE titles, each 1 to 16 ASCII characters"),
])
def test_a_value_a_setting_cannot_have_is_refused(variable: str, value: str, expected: str):
    """Where it would classify nothing (a batch of 0), refuse every image (a threshold of 5), fail
    on every image (ages the wrong way round) or every delivery (a URL without its scheme; an AE
    title pynetdicom refuses at each association, which the outbox would retry for days; a
    processing ID, MSH-11, that the receiver refuses in every message: CR, HL7 v2.5 2.9.2.2)."""
    with pytest.raises(ValueError, match=re.escape(f": expected {expected}")):
        configuration.load(environ={f"CTAI_{variable}": value})


def test_a_setting_named_for_a_unit_takes_a_fraction():
    config = configuration.load(environ={"CTAI_WORKER__LEASE_SECONDS": "2.5", "CTAI_ORTHANC__TIMEOUT": "7.5"})
    assert config["worker"]["lease_seconds"] == 2.5 and config["orthanc"]["timeout"] == 7.5
    with pytest.raises(ValueError, match=r"\[orthanc\] stable_age = 2.5: expected a whole number"):
        configuration.load(environ={"CTAI_ORTHANC__STABLE_AGE": "2.5"})  # Orthanc's StableAge is whole seconds


def test_urls_that_serve_are_taken():
    config = configuration.load(environ={"CTAI_QUEUE__URL": "unix:///run/redis.sock",
                                         "CTAI_ORTHANC__URL": "https://pacs.hospital.local:8042"})
    assert config["queue"]["url"] == "unix:///run/redis.sock"


def test_ctai_config_hides_the_secrets_unless_asked_and_audits_that(capsys, monkeypatch, tmp_path):
    from ctai.audit import read

    monkeypatch.setenv("CTAI_DATA__DIR", str(tmp_path))
    monkeypatch.setenv("CTAI_ORTHANC__PASSWORD", "hunter2")
    monkeypatch.setenv("CTAI_FHIR__AUTHORIZATION", "Bearer s3cr3t")
    monkeypatch.setenv("CTAI_QUEUE__URL", "redis://:pw0rd@10.0.0.5:6379/0")
    assert main(["config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["orthanc"]["password"] == printed["fhir"]["authorization"] == configuration.HIDDEN
    assert printed["queue"]["url"] == "redis://:***@10.0.0.5:6379/0"
    assert printed["web"]["staff_token"] == printed["dicomweb"]["authorization"] == ""  # not set: none to hide
    assert not list(read(configuration.load()))
    assert main(["config", "--secrets"]) == 0
    assert tomllib.loads(capsys.readouterr().out) == configuration.load()
    assert [event["action"] for event in read(configuration.load())] == ["config.secrets"]
