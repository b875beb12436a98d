"""The plugin system: built-ins come from entry points, a third party's the same way."""

import sys
from pathlib import Path

import pytest

from ctai.cli import main
from ctai.plugins import describe, plugin_manager

BUILT_IN = {"chest", "tensorflow", "sr", "sc", "folder", "fhir", "stow", "metrics"}

THIRD_PARTY_MODULE = '''
from ctai import hookimpl

calls = []

@hookimpl
def ctai_job_finished(job, results, failures, config):
    calls.append((job.id, len(results), len(failures)))
'''


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch):
    """An installed distribution 'ctai-extra' with a ``ctai`` entry point, as pip would leave it."""
    (tmp_path / "ctai_extra.py").write_text(THIRD_PARTY_MODULE)
    dist = tmp_path / "ctai_extra-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ctai-extra\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ctai]\nextra = ctai_extra\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("ctai_extra", None)


def test_built_in_plugins_load_from_entry_points(config):
    names = {row["name"] for row in describe(plugin_manager(config))}
    assert BUILT_IN <= names


def test_third_party_plugin_is_loaded_and_called(config, third_party):
    from ctai.pipeline import Pipeline
    from ctai.types import Failure, Job

    pm = plugin_manager(config)
    assert "extra" in {row["name"] for row in describe(pm)}
    Pipeline(config, pm).run(Job(id="j1", source="test"), [Failure("x.png", "broken")])
    import ctai_extra

    assert ctai_extra.calls == [("j1", 0, 1)]


def test_configuration_switches_a_plugin_off(config):
    config["plugins"]["disabled"] = ["sc"]
    names = {row["name"] for row in describe(plugin_manager(config))}
    assert "sc" not in names and "sr" in names


def test_ctai_plugins_lists_hooks(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "ctai_make_outputs" in out and "ctai_classifier" in out and "chest" in out
