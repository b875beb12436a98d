"""The local-validation report (``ctai site validate``) in Chromium: it renders without a console
message or page error, its figures are real images, and it passes axe-core's serious checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctai.site import report
from ctai.site.cases import Cases
from tests.test_site_calibration import site

sync_api = pytest.importorskip("playwright.sync_api")
axe_playwright = pytest.importorskip("axe_playwright_python.sync_playwright")

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def test_the_validation_report_renders_in_chromium_without_console_errors(tmp_path):
    y, probs, patients = site(n=200, normal_shift=-3.0, seed=7)
    cases = Cases()
    for i, (label, p, patient) in enumerate(zip(y, probs, patients, strict=True)):
        cases.add(f"case{i}", int(label), list(p), patient,
                  {"modality": "DX" if i % 3 else "CR", "manufacturer": "Acme" if i % 2 else "Other", "age": i % 15})
    numbers = report.measure(cases, np.asarray(probs), rounds=50)
    path = tmp_path / "report.html"
    path.write_text(report.html_report("ctai: local validation", [("source", "test")], cases, np.asarray(probs),
                                       numbers, ["A note."]))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page()
        messages: list[str] = []
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"error: {e}"))
        page.goto(path.as_uri())
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete && i.naturalWidth)")
        assert messages == []
        assert len(widths) == 3 and all(w > 300 for w in widths)
        assert page.locator("h2", has_text="By manufacturer").count() == 1
        violations = axe_playwright.Axe().run(page).response["violations"]
        assert [v["id"] for v in violations if v["impact"] in ("serious", "critical")] == []
        browser.close()
