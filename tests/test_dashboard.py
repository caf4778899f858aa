"""The dashboard at `GET /`: rendering units, and a real browser on a real daemon.

The browser test drives Debian's headless Chromium with Playwright (.ci/install-browser.sh
installs both; Playwright's own browser download is never used) against a `modeld run` process
whose models folder gets two models from modeld.daemon.producer. It keeps a screenshot in
test-artifacts/dashboard.png.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modeld.daemon.http.dashboard import DashboardPage, render_models, score_histogram
from modeld.daemon.producer.simulator import simulate_wifi_logs
from modeld.daemon.producer.trainer import train_artifact, write_artifact
from tests.helpers import DaemonProcess

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


# ------------------------------------------------------------------------- units


def test_models_table_escapes_what_artifacts_say() -> None:
    html = render_models([{
        "version": "v1", "status": "available", "model_type": "IsolationForest",
        "quality_score": 0.85, "created_at": "2026-11-28T10:15:00Z", "imported_at": None,
        "reason": None, "warnings": ["<script>alert(1)</script>"], "errors": [],
        "metrics": {"f1_score": 0.8, "roc_auc": 0.9, "precision": 0.7, "recall": 0.95},
    }, {
        "version": "v2", "status": "rejected", "model_type": "x", "quality_score": 0.2,
        "created_at": None, "imported_at": None, "reason": "bad <b>", "warnings": [],
        "errors": ["e"], "metrics": None,
    }])
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert 'data-action="deploy" data-version="v1"' in html
    assert 'data-version="v2"' in html and 'data-action="deploy" data-version="v2"' not in html
    assert "F1 0.80 · AUC 0.90 · P 0.70 · R 0.95" in html
    assert "bad &lt;b&gt;" in html


def test_score_histogram_shares_bins_and_keeps_heavy_tails_readable() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0.45, 0.03, 2000)
    live = np.concatenate([rng.normal(0.5, 0.03, 970), np.full(30, 5.0)])
    hist = score_histogram(live, reference)
    assert len(hist["edges"]) == 41 and len(hist["live"]) == len(hist["reference"]) == 40
    assert sum(hist["live"]) == pytest.approx(1.0)
    assert sum(hist["reference"]) == pytest.approx(1.0)
    assert hist["clipped"] >= 30 and hist["live"][-1] >= 0.03, "the tail is in the end bin"
    assert hist["scale"] == "linear"
    lof = score_histogram(np.abs(rng.standard_cauchy(1000)) + 1, np.abs(rng.standard_cauchy(1000)) + 1)
    assert lof["scale"] == "log"
    empty = score_histogram(np.zeros(0), None)
    assert empty["edges"] == [] and empty["reference"] is None


def test_page_inlines_its_assets_and_renders_without_data_when_locked() -> None:
    page = DashboardPage().render(None, token_required=True)
    assert page.startswith("<!doctype html>")
    assert "{{" not in page
    assert 'data-token-required="true"' in page
    assert "requires an API token" in page
    assert "<script src" not in page and "<link" not in page, "works offline, one open path"
    assert "sessionStorage" in page


# ------------------------------------------------------------------------- the browser


@pytest.fixture
def browser() -> Iterator[Any]:
    if os.environ.get("CI") == "true":  # CI installs both: a missing one is a failure there
        from playwright import sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
        if not CHROMIUM.exists() and shutil.which("chromium") is None:
            pytest.skip("Debian's chromium is not installed (.ci/install-browser.sh)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def score_for(daemon: DaemonProcess, records: list[dict[str, Any]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        batch = records[i % len(records):i % len(records) + 60]
        response = daemon.post("/api/v1/score", {"records": batch})
        assert response.status_code == 200, response.text
        i += 60
        time.sleep(0.15)


@pytest.mark.e2e
def test_dashboard_in_a_real_browser_shows_plots_and_deploys(
    daemon: DaemonProcess, browser: Any
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    logs = simulate_wifi_logs(2200, now - timedelta(days=4), seed=5, anomaly_burst=True)
    newer = train_artifact(logs, now=now, n_estimators=60, version="wifi-forest")
    older = train_artifact(logs, model_type="LocalOutlierFactor", now=now - timedelta(hours=2),
                           version="wifi-lof")
    write_artifact(newer, daemon.models_dir)
    write_artifact(older, daemon.models_dir)
    daemon.start()
    daemon.wait_deployed("wifi-forest")  # the newer one; the older stays available
    daemon.wait_for(lambda: len(daemon.get("/api/v1/models").json()) == 2, 20, "both imports")
    traffic = simulate_wifi_logs(3000, now - timedelta(days=1), seed=6, anomaly_burst=True)
    score_for(daemon, traffic, 0.5)

    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(daemon.base + "/?refresh=1")
    assert response is not None and response.status == 200
    assert page.locator("#deployed-version").get_attribute("data-version") == "wifi-forest"
    assert page.locator("tr[data-version='wifi-forest'] .status").inner_text() == "deployed"

    score_for(daemon, traffic, 2.5)
    for plot in ("anomaly-rate", "latency", "scores"):
        page.wait_for_function(
            f"Number(document.querySelector('[data-plot=\"{plot}\"]').dataset.points) > 0",
            timeout=15_000)
    assert page.locator("[data-plot='scores'] path").count() == 2, "live against reference"

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("button[data-action='deploy'][data-version='wifi-lof']").click()
    page.wait_for_function(
        "document.getElementById('deployed-version').dataset.version === 'wifi-lof'",
        timeout=15_000)
    assert daemon.status()["deployed_version"] == "wifi-lof"
    assert page.locator("tr[data-version='wifi-lof'] .status").inner_text() == "deployed"
    assert page.locator("tr[data-version='wifi-forest'] .status").inner_text() == "fallback"
    assert "wifi-lof" in page.locator("[data-section='history']").inner_text()

    # the plots follow the swap: the new version's points and the swap marker appear
    score_for(daemon, traffic, 2)
    page.wait_for_function(
        "document.querySelector('[data-plot=\"anomaly-rate\"]').parentElement"
        ".querySelector('.legend').textContent.includes('wifi-lof')", timeout=15_000)
    assert page.locator("[data-plot='anomaly-rate'] line.swap").count() >= 1
    page.wait_for_function(
        "document.getElementById('scores-caption').textContent.startsWith('wifi-lof')",
        timeout=15_000)
    assert errors == []

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.close()
