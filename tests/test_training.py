"""Training: the patient-level split, and a tiny real run that exports a loadable model."""

import json
from pathlib import Path

import numpy as np
import pytest

from ctai.inputs.images import read_gray
from ctai.labelled_folder import Sample, patient_of, scan
from ctai.model.backend import KerasClassifier
from ctai.model.preprocess import to_model_input
from tests.conftest import IMAGES, kermany_layout
from training.calibrate import softmax
from training.data import split_by_patient


def test_patient_keys():
    assert patient_of(Path("person1000_bacteria_2931.jpeg")) == "person1000"
    assert patient_of(Path("person1000_virus_1681.jpeg")) == "person1000"
    assert patient_of(Path("IM-0115-0001.jpeg")) == "IM-0115"
    assert patient_of(Path("NORMAL2-IM-1427-0001.jpeg")) == "NORMAL2-IM-1427"


def test_no_patient_in_both_splits():
    samples = [Sample(Path(f"PNEUMONIA/person{i % 50}_{kind}_{i}.jpeg"), 1, f"person{i % 50}")
               for i, kind in enumerate(["bacteria", "virus"] * 200)]
    train, val = split_by_patient(samples, 0.2, seed=1)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert len(train) + len(val) == len(samples)
    assert split_by_patient(samples, 0.2, seed=1) == (train, val)


def test_labels_from_layout(tmp_path: Path):
    samples = scan(kermany_layout(tmp_path))
    by_name = {s.path.name: s.label for s in samples}
    assert by_name["IM-0115-0001.jpeg"] == 0
    assert by_name["person1000_bacteria_2931.jpeg"] == 1
    assert by_name["person1000_virus_1681.jpeg"] == 2


@pytest.fixture(scope="module")
def tiny_members(tmp_path_factory) -> list[Path]:
    """Two one-epoch runs on the committed images that differ only in their seed."""
    from training.train import main

    root = tmp_path_factory.mktemp("training")
    data = kermany_layout(root / "data")
    members = []
    recipes = {"1": [], "2": ["--crop-scale", "0.35", "1", "--intensity"]}  # both augmentations run
    for seed, recipe in recipes.items():
        out = root / f"model-{seed}"
        main(["--data", str(data), "--out", str(out), "--work", str(root / f"work-{seed}"), "--epochs", "1",
              "--size", "64", "--width", "16", "--batch", "4", "--val-fraction", "0.4", "--seed", seed, *recipe])
        assert (root / f"work-{seed}" / "run.json").exists()
        members.append(out)
    return members


def one_image(size: int) -> np.ndarray:
    return to_model_input(read_gray(next(IMAGES.glob("*.jpeg"))), size)[np.newaxis]


def test_tiny_training_run_exports_a_model_ctai_loads(tiny_members):
    classifier = KerasClassifier(tiny_members[0])
    assert classifier.input_size == 64
    probs = classifier.predict(one_image(64))
    assert probs.shape == (1, 3) and abs(probs.sum() - 1) < 1e-6


def test_ensemble_averages_the_members_logits(tiny_members, tmp_path: Path):
    from training.ensemble import main

    out = tmp_path / "ensemble"
    main(["--members", *map(str, tiny_members), "--data", str(kermany_layout(tmp_path / "data")),
          "--out", str(out), "--work", str(tmp_path / "work"), "--val-fraction", "0.4", "--version", "9.9.9"])
    ensemble = KerasClassifier(out)
    assert ensemble.info.version == "9.9.9"
    x = one_image(64)
    expected = np.mean([KerasClassifier(m).outputs(x).logits for m in tiny_members], axis=0)
    np.testing.assert_allclose(ensemble.outputs(x).logits, expected, atol=1e-5)
    assert abs(ensemble.predict(x).sum() - 1) < 1e-6


def test_a_two_stage_ensemble_takes_normal_from_its_members_and_the_split_from_the_split_members(
        tiny_members, tmp_path: Path):
    from training.ensemble import main
    from training.half import convert

    first, second = tiny_members
    out = tmp_path / "two-stage"
    main(["--members", str(first), "--split-members", str(first), str(second), "--out", str(out),
          "--data", str(kermany_layout(tmp_path / "data")), "--work", str(tmp_path / "work"),
          "--val-fraction", "0.4", "--version", "9.9.9"])
    ensemble = KerasClassifier(out)
    assert "two stages over 2 x" in json.loads((out / "model.json").read_text())["architecture"]
    x = np.concatenate([one_image(64), np.random.default_rng(0).standard_normal((3, 64, 64, 1))]).astype(np.float32)
    p = softmax(ensemble.outputs(x).logits)
    normal = softmax(KerasClassifier(first).outputs(x).logits)
    split = softmax(np.mean([KerasClassifier(m).outputs(x).logits for m in tiny_members], axis=0))
    np.testing.assert_allclose(p[:, 0], normal[:, 0], atol=1e-5)
    np.testing.assert_allclose(p[:, 1] / p[:, 2], split[:, 1] / split[:, 2], rtol=1e-4)
    probabilities = ensemble.analyse(x, heatmaps=True).probabilities
    np.testing.assert_allclose(probabilities, ensemble.predict(x), atol=1e-6)
    # Each class's heat map comes from the members that decide that class.
    logits, maps, _ = ensemble.outputs(x)
    member_maps = [KerasClassifier(m).outputs(x).maps for m in tiny_members]
    np.testing.assert_allclose(maps[..., 0], member_maps[0][..., 0], atol=1e-4)
    np.testing.assert_allclose(maps[..., 1:], np.mean(member_maps, axis=0)[..., 1:], atol=1e-4)
    np.testing.assert_allclose(maps[..., 0].mean(axis=(1, 2)), logits[:, 0], atol=1e-4)
    convert(out, "float16")  # the head survives the float16 storage's architecture JSON
    np.testing.assert_allclose(KerasClassifier(out).predict(x), probabilities, atol=1e-2)
    with pytest.raises(ValueError, match="two stages"):  # its members would lose their roles
        main(["--members", str(out), str(second), "--out", str(tmp_path / "more"), "--data", str(tmp_path / "data"),
              "--work", str(tmp_path / "work"), "--val-fraction", "0.4", "--version", "9.9.9"])


def test_calibration_moves_to_the_given_priors():
    from training.calibrate import fit

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100, int), rng.integers(1, 3, 200)]
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), y] += 2
    frequencies = np.bincount(y) / len(y)
    temperature, bias = fit(logits, y)
    same_temperature, same_bias = fit(logits, y, frequencies)
    assert same_temperature == pytest.approx(temperature)
    np.testing.assert_allclose(same_bias, bias, atol=1e-9)
    _, uniform = fit(logits, y, np.ones(3))
    expected = np.array(bias) + np.log(frequencies[0] / frequencies)
    np.testing.assert_allclose(uniform, expected, atol=1e-9)


def test_an_ensemble_joins_another_member_by_member(tiny_members, tmp_path: Path):
    from training.ensemble import main

    data = str(kermany_layout(tmp_path / "data"))
    common = ["--data", data, "--val-fraction", "0.4", "--version", "9.9.9"]
    main(["--members", *map(str, tiny_members), "--out", str(tmp_path / "pair"), "--work", str(tmp_path / "w1"),
          *common])
    main(["--members", str(tmp_path / "pair"), str(tiny_members[0]), "--out", str(tmp_path / "three"),
          "--work", str(tmp_path / "w2"), *common])
    three = KerasClassifier(tmp_path / "three")
    assert three.info.version == "9.9.9"
    x = one_image(64)
    first, second = (KerasClassifier(m).outputs(x).logits for m in tiny_members)
    np.testing.assert_allclose(three.outputs(x).logits, (2 * first + second) / 3, atol=1e-5)


def test_float16_packing_keeps_the_outputs(tiny_members, tmp_path: Path):
    import shutil

    from training.half import convert

    shutil.copytree(tiny_members[0], tmp_path / "half")
    convert(tmp_path / "half", "float16")
    assert not (tmp_path / "half" / "model.keras").exists()
    x = one_image(64)
    np.testing.assert_allclose(KerasClassifier(tmp_path / "half").predict(x),
                               KerasClassifier(tiny_members[0]).predict(x), atol=1e-2)


def test_the_shipped_model_fits_its_50_mb_budget():
    from ctai.model.backend import shipped_model_dir

    assert sum(f.stat().st_size for f in shipped_model_dir().iterdir()) <= 50_000_000
