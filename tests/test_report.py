"""The report: self-contained, escaped, the same facts as JSON; rendered in a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_config

from debias import ModelConfig, train
from debias.jobs.audit import AuditConfig, write_audit
from debias.jobs.outliers import OutlierConfig, write_outliers
from debias.jobs.report import ReportConfig, write_report

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory: pytest.TempPathFactory, synth_run) -> dict[str, Path]:
    """A DB-VAE run, a baseline run, an audit with a hostile group name, and an outlier scan."""
    data, run = synth_run
    root = tmp_path_factory.mktemp("report")
    baseline = root / "baseline"
    train(
        tiny_config(
            data=str(data),
            out=str(baseline),
            baseline=True,
            epochs=2,
            model=ModelConfig(image_size=32, latent_dim=16, filters=8, hidden=64),
        )
    )
    labels = pd.read_csv(data / "labels.csv", keep_default_na=False)
    labels["glasses"] = labels["glasses"].replace({"yes": EVIL})  # a group name from user data
    labels.to_csv(data / "evil.csv", index=False)
    audit = write_audit(
        AuditConfig(model=str(run), labels=str(data / "evil.csv"), out=str(root / "audit"))
    )
    outliers = write_outliers(
        OutlierConfig(model=str(run), data=str(data / "not_face"), out=str(root / "o.csv"))
    )
    return {"run": run, "baseline": baseline, "audit": audit.out, "outliers": outliers.csv,
            "root": root}  # fmt: skip


@pytest.fixture(scope="module")
def report_html(report_inputs: dict[str, Path]) -> Path:
    return write_report(
        ReportConfig(
            run=str(report_inputs["run"]),
            baseline=str(report_inputs["baseline"]),
            audit=str(report_inputs["audit"]),
            outliers=str(report_inputs["outliers"]),
            out=str(report_inputs["root"] / "report"),
        )
    )


def test_report_is_self_contained_and_escaped(report_html: Path) -> None:
    html = report_html.read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html  # no scripts at all
    assert 'src="http' not in html and "url(http" not in html  # nothing fetched
    assert html.count('src="data:image/png;base64,') >= 8
    for section in ("Headline", "Data", "Per-group", "Baseline vs debiased", "What the DB-VAE",
                    "Outliers", "Model card"):  # fmt: skip
        assert section in html


def test_report_json_and_markdown_carry_the_headline(report_html: Path, report_inputs) -> None:
    facts = json.loads((report_html.parent / "report.json").read_text())
    audit = json.loads((report_inputs["audit"] / "audit.json").read_text())
    assert facts["audit"]["summary"] == audit["summary"]
    assert set(facts["headline"]) == set(facts["baseline_headline"]) == {
        "overall_accuracy", "worst_group_accuracy", "variance_across_groups",
        "false_positive_rate",
    }  # fmt: skip
    markdown = (report_html.parent / "report.md").read_text()
    assert f"{facts['headline']['overall_accuracy']:.3f}" in markdown


def test_browser_renders_every_figure_offline(report_html: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    facts = json.loads((report_html.parent / "report.json").read_text())
    requests, problems = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(report_html.as_uri())
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        overall = page.get_by_test_id("overall")
        assert overall.is_visible()
        assert overall.inner_text() == f"{facts['headline']['overall_accuracy']:.3f}"
        worst = facts["audit"]["summary"]["worst_group"]
        assert page.get_by_test_id("worst").inner_text() == f"{worst['value']:.3f}"
        assert page.get_by_test_id("failing").is_visible()
        assert page.get_by_test_id("changes").is_visible()
        images = page.locator("img")
        assert images.count() >= 8
        for i in range(images.count()):
            image = images.nth(i)
            image.scroll_into_view_if_needed()
            assert image.is_visible()
            assert image.evaluate("im => im.complete && im.naturalWidth > 0")
        assert page.get_by_text(EVIL).first.is_visible()  # shown as text, not run
        browser.close()
    assert [r for r in requests if not r.startswith(("data:", "file:"))] == []
    assert problems == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_shows_training_composition_and_draws(report_html: Path, report_inputs) -> None:
    facts = json.loads((report_html.parent / "report.json").read_text())
    samples = pd.read_csv(report_inputs["run"] / "samples.csv", keep_default_na=False)
    train = samples[samples["split"] == "train"]
    skin = facts["training_composition"]["skin_tone"]
    assert {g: v["n"] for g, v in skin.items()} == train["skin_tone"][
        train["skin_tone"] != ""
    ].value_counts().to_dict()
    assert sum(v["image_share"] for v in skin.values()) == pytest.approx(1.0)
    assert sum(v["draw_share"] for v in skin.values()) == pytest.approx(1.0)
    # Rare dark-skinned faces get more of the draws than their share of the images.
    assert skin["dark"]["draw_share"] > 1.2 * skin["dark"]["image_share"]
    both = facts["training_composition"]["skin_tone & glasses"]
    assert sum(v["n"] for k, v in both.items() if k.startswith("dark")) == skin["dark"]["n"]
    assert "share of training draws" in report_html.read_text()
