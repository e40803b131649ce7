"""The report: self-contained, escaped, the same facts as JSON; rendered in a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_config

from debias import ModelConfig, TrainConfig, train
from debias.facts import model_card
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
            model=str(report_inputs["run"]),
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
    for section in ("Headline", "Data", "Per-group", "Baseline vs this model", "What the DB-VAE",
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


@pytest.mark.parametrize(
    "options, method",
    [
        (dict(baseline=True), "plain classifier, 10 epochs, latent 100, uniform draws, seed 0."),
        (
            dict(baseline=True, balance_groups=["race", "gender"]),
            "draws that weigh every race x gender cell the same within each class (reads labels)",
        ),
        (dict(weighting="rarity"), "DB-VAE, 10 epochs, latent 100, latent histograms (product"),
        (
            dict(),
            "DB-VAE, 10 epochs, latent 100, error feedback (the errors of epoch 3 get 25% of each "
            "class's draws) with latent histograms (product rule, ESS fraction 0.5), seed 0.",
        ),
        (dict(epochs=3), "uniform draws (error feedback starts after epoch 3, and the run had 3)"),
        (
            dict(select="worst-cluster", weighting="mixture"),
            "a joint latent density (Gaussian mixtures on whitened principal axes, ESS fraction "
            "0.5), keeping the epoch with the best worst accuracy over latent clusters of each "
            "class's validation images, seed 0.",
        ),
    ],
)
def test_the_model_card_says_how_the_run_drew(options: dict, method: str) -> None:
    """The method line follows the weighting the run used, not the default's name for it."""
    data = dict(classes=["a", "b"], source="faces", layout="folders", n_train=8, n_val=2,
                n_skipped=0, group_columns=["race", "gender"])  # fmt: skip
    card = model_card({"train": TrainConfig(**options).to_dict(), "data": data}, None, None)
    assert method in card.method


@pytest.fixture(scope="module")
def external(report_inputs: dict[str, Path], synth_run) -> dict[str, Path]:
    """A user's own classifier: the run's encoder exported as TorchScript, audited, reported."""
    import torch

    from debias.runfolder import load_model

    data, run = synth_run
    root = report_inputs["root"]
    encoder = load_model(run)[0].eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = encoder

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.encode(x)[0]

    model = root / "their_classifier.pt"
    torch.jit.save(torch.jit.trace(Logits().eval(), torch.zeros(2, 3, 32, 32)), str(model))
    audit = write_audit(
        AuditConfig(model=str(model), data=str(data), image_size=32, embed_with=str(run),
                    out=str(root / "their-audit"))
    )  # fmt: skip
    html = write_report(ReportConfig(audit=str(audit.out), out=str(root / "their-report")))
    return {"model": model, "audit": audit.out, "html": html, "data": data, "run": run}


def test_report_about_an_external_model_is_named_after_it(external) -> None:
    facts = json.loads((external["html"].parent / "report.json").read_text())
    subject = facts["subject"]
    assert subject["path"] == str(external["model"]) and subject["kind"] == "torchscript"
    assert facts["run"] is None and facts["train_config"] is None  # nothing about training
    assert "DB-VAE" not in facts["model_card"]["method"]
    assert "TorchScript" in facts["model_card"]["method"]
    assert any("assumed" in c for c in facts["model_card"]["caveats"])
    assert facts["name"] == "their_classifier.pt"
    html = external["html"].read_text()
    assert "What the DB-VAE learned" not in html and "not known to debias" in html


def test_a_report_never_attributes_an_audit_to_another_model(external, tmp_path: Path) -> None:
    from debias import RunError

    # The run's folder with the external model's audit: refused, one line naming both.
    with pytest.raises(RunError, match="is an audit of .*their_classifier.pt, not of"):
        write_report(ReportConfig(model=str(external["run"]), audit=str(external["audit"]),
                                  out=str(tmp_path / "r1")))  # fmt: skip
    # The same file changed after the audit: its hash no longer matches.
    changed = tmp_path / "their_classifier.pt"
    changed.write_bytes(external["model"].read_bytes() + b"\0")
    with pytest.raises(RunError, match="SHA-256 differ"):
        write_report(ReportConfig(model=str(changed), audit=str(external["audit"]),
                                  out=str(tmp_path / "r2")))  # fmt: skip
    # The file it came from: accepted.
    same = write_report(ReportConfig(model=str(external["model"]), audit=str(external["audit"]),
                                     out=str(tmp_path / "r3")))  # fmt: skip
    assert same.is_file()


def test_report_about_a_predictions_csv_and_a_baseline_audit(external, report_inputs,
                                                             tmp_path: Path) -> None:  # fmt: skip
    # Predictions made elsewhere, compared with the external model's audit on the same images.
    preds = tmp_path / "scores.csv"
    shutil.copy(external["audit"] / "predictions.csv", preds)
    audit = write_audit(AuditConfig(predictions=str(preds), out=str(tmp_path / "pa")))
    html = write_report(
        ReportConfig(audit=str(audit.out), baseline_audit=str(external["audit"]),
                     out=str(tmp_path / "pr"))
    )  # fmt: skip
    facts = json.loads((html.parent / "report.json").read_text())
    assert facts["subject"]["kind"] == "predictions" and facts["name"] == "scores"
    assert facts["baseline"] == str(external["model"])
    # Same predictions: every change is 0 with a zero-width paired interval.
    assert facts["changes"] and all(r["change"] == 0 and r["ci_low"] == r["ci_high"] == 0
                                    for r in facts["changes"])  # fmt: skip
    assert facts["seeds"] == 1
    # An audit of other images cannot be paired.
    from debias import DataError

    other = tmp_path / "other.csv"
    pd.read_csv(preds).sample(frac=0.5, random_state=0).to_csv(other, index=False)
    small = write_audit(AuditConfig(predictions=str(other), out=str(tmp_path / "oa")))
    with pytest.raises(DataError, match="not audited on the same images"):
        write_report(ReportConfig(audit=str(small.out), baseline_audit=str(external["audit"]),
                                  out=str(tmp_path / "pr2")))  # fmt: skip


def test_existing_report_is_kept_unless_overwrite(external, tmp_path: Path) -> None:
    from debias import RunError

    config = ReportConfig(audit=str(external["audit"]), out=str(tmp_path / "r"))
    first = write_report(config)
    before = first.read_bytes()
    with pytest.raises(RunError, match="already holds a debias report.*overwrite=True"):
        write_report(config)
    assert first.read_bytes() == before
    write_report(ReportConfig(audit=str(external["audit"]), out=str(tmp_path / "r"),
                              overwrite=True))  # fmt: skip


def test_browser_renders_the_external_model_report(external, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    html = external["html"]
    facts = json.loads((html.parent / "report.json").read_text())
    requests, problems = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(html.as_uri())
        subject = page.get_by_test_id("subject").inner_text()
        assert "their_classifier.pt" in subject and "torchscript" in subject
        assert facts["subject"]["sha256"][:12] in subject
        assert page.get_by_test_id("overall").inner_text() == (
            f"{facts['headline']['overall_accuracy']:.3f}"
        )
        assert page.get_by_test_id("normalisation").is_visible()
        card = page.get_by_test_id("model-card").inner_text()
        assert facts["subject"]["sha256"] in card and "DB-VAE," not in card
        slices = page.get_by_test_id("slices")
        assert slices.is_visible()  # found with the run's latents (--embed-with)
        assert page.get_by_test_id("deciles").is_visible()
        images = page.locator("img")
        assert images.count() >= 2
        for i in range(images.count()):
            image = images.nth(i)
            image.scroll_into_view_if_needed()
            assert image.evaluate("im => im.complete && im.naturalWidth > 0")
        browser.close()
    assert [r for r in requests if not r.startswith(("data:", "file:"))] == []
    assert problems == []
