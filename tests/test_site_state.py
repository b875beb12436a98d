"""The site's mode and calibration versions (``ctai.site.state``): switched by one command with
who and when, applied by every pipeline (a restart, a second worker, another machine on Redis),
named in every output, and undone exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest

from ctai import hookimpl
from ctai.cli import _outcome_json, main
from ctai.model.backend import ProbabilityClassifier
from ctai.monitoring import site_metrics
from ctai.outputs.fhir import build_bundle
from ctai.outputs.hl7 import build_oru
from ctai.outputs.picture import footnotes
from ctai.outputs.sr import build_sr
from ctai.pipeline import Pipeline
from ctai.plugins import plugin_manager
from ctai.site import state
from ctai.site.calibration import Calibration
from ctai.types import CLASSES, Job, ModelInfo, SourceImage
from tests.peers import result
from tests.redis_server import RedisServer
from tests.test_jobs import CHEST

OWN = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.05, 0.15, 0.8]])


class Classifier(ProbabilityClassifier):
    info = ModelInfo("site-test", "1.0")
    input_size = 32

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return OWN[np.arange(len(batch)) % len(OWN)]


class StandIn:
    @hookimpl(tryfirst=True)
    def ctai_classifier(self, config):
        return Classifier()


def pipeline(config) -> Pipeline:
    config["plugins"]["disabled"] = ["sr", "sc", "folder", "cstore", "hl7", "orthanc", "upload", "listener",
                                     "gate", "fhir", "stow"]
    pm = plugin_manager(config)
    pm.register(StandIn())
    return Pipeline(config, pm)


def calibration(model: str = "site-test 1.0", bias: tuple = (0.0, -1.0, -1.5), when: str = "2026-12-01") -> Calibration:
    return Calibration(id=f"site-{when}", created=f"{when}T10:00:00+00:00", model=model, method="bias",
                       temperature=1.0, bias=list(bias), cases={"normal": 40, "bacterial": 40, "viral": 40},
                       patients=100, source="test", expected={"sens": 0.97, "spec": 0.92})


def classified(p: Pipeline) -> list:
    images = [SourceImage(f"img{i}", result().source.dataset, CHEST) for i in range(3)]
    return p.run(Job("j", "cli", {"send": False, "outputs": False}), images)


def probabilities(results: list) -> list[list[float]]:
    return [[r.prediction.probabilities[c] for c in CLASSES] for r in results]


def test_mode_switches_by_one_command_recorded_with_who_and_when(config, tmp_path, capsys):
    path = tmp_path / "ctai.toml"
    path.write_text(f'[data]\ndir = "{config["data"]["dir"]}"\n')
    assert state.mode(config) == "live"
    assert main(["--config", str(path), "site", "--by", "dr.ng", "shadow"]) == 0
    assert state.mode(config) == "shadow"
    assert main(["--config", str(path), "site", "live"]) == 0
    [first, second] = state.history(config)
    assert (first["who"], first["mode"], second["mode"]) == ("dr.ng", "shadow", "live")
    assert datetime.fromisoformat(first["when"]).tzinfo is not None and "@" in second["who"]
    capsys.readouterr()
    assert main(["--config", str(path), "site"]) == 0
    assert "mode: live" in capsys.readouterr().out


def test_the_calibration_applies_on_a_restart_and_reset_restores_the_models_own_exactly(config):
    np.testing.assert_array_equal(probabilities(classified(pipeline(config))), OWN)
    state.save(config, calibration(), "test")
    restarted = classified(pipeline(config))  # a new process: reads the store
    assert {r.prediction.calibration for r in restarted} == {"site-2026-12-01"}
    assert restarted[0].prediction.model_probabilities == dict(zip(CLASSES, OWN[0], strict=True))
    assert restarted[1].prediction.probabilities["normal"] > OWN[1][0]
    state.use(config, None, "test")
    reset = classified(pipeline(config))
    assert probabilities(reset) == OWN.tolist()
    assert {r.prediction.calibration for r in reset} == {None}
    assert [v.id for v in state.versions(config)] == ["site-2026-12-01"]  # kept: `--use` brings it back
    state.use(config, "site-2026-12-01", "test")
    assert state.active(config).id == "site-2026-12-01"
    with pytest.raises(ValueError, match="no calibration 'nope'"):
        state.use(config, "nope", "test")


def test_a_calibration_for_another_model_is_not_applied(config):
    state.save(config, calibration(model="other 9.9"), "test")
    assert {r.prediction.calibration for r in classified(pipeline(config))} == {None}


def test_every_output_names_the_calibration(config):
    named = result()
    named = replace(named, prediction=replace(named.prediction, calibration="site-xyz"))
    assert _outcome_json(named)["calibration"] == {"site": "site-xyz"}
    assert _outcome_json(result())["calibration"] == {"site": None}
    for prediction, name in ((result().prediction, "the model's own calibration (no site calibration)"),
                             (named.prediction, "site calibration site-xyz")):  # an SR of the kind came first
        sr = build_sr(replace(named, prediction=prediction), 9901, True)
        assert name in {e.value for e in sr.iterall() if e.keyword == "TextValue"}
    oru = build_oru(named, config["hl7"], "1", datetime.now().astimezone()).to_er7()
    assert "CTAI-CALIBRATION^Calibration^99CTAI||site calibration site-xyz" in oru
    bundle = json.loads(build_bundle(named, "urn:test", datetime.now().astimezone()).model_dump_json())
    device = bundle["entry"][0]["resource"]
    assert device["resourceType"] == "Device" and device["version"][1]["value"] == "site calibration site-xyz"
    assert "Calibration: site calibration site-xyz" in footnotes(named)
    state.save(config, calibration(), "test")
    [info] = [m for m in site_metrics(config) if m.name == "ctai_site_calibration"]
    assert info.samples[0].labels == {"id": "site-2026-12-01"}


def test_a_second_machine_on_redis_applies_the_same_calibration_and_mode(config, tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        machines = []
        for name in ("a", "b"):
            machine = json.loads(json.dumps(config))
            machine["data"]["dir"] = str(tmp_path / name)
            machine["queue"].update(backend="redis", url=server.url)
            machines.append(machine)
        state.save(machines[0], calibration(), "a")
        state.set_mode(machines[0], "shadow", "a")
        other = pipeline(machines[1])
        assert {r.prediction.calibration for r in classified(other)} == {"site-2026-12-01"}
        assert other.site.shadow and state.history(machines[1])[-1]["mode"] == "shadow"
    finally:
        server.stop()
