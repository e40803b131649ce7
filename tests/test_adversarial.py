"""Every command against damaged inputs, impossible options, a second writer, a full disk, kill -9.

Each case copies one finished world (data, run, audit, outliers pair) into its own folder,
damages it, runs one command and asserts what a user must see: exit 0 or 1, never a traceback,
one ``Error:`` line that names the problem (and never the last-resort "bug" message), and no
temp or lock files left beside the outputs. The kill tests run the real executable and check
that a destination holds the whole old set or the whole new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from debias import files, runfolder
from debias.config import ModelConfig
from debias_cli.main import app

runner = CliRunner()
EXE = str(Path(sys.executable).parent / "debias")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished world: data/, run/, audit/, out.csv + out.json (relative paths inside)."""
    from debias import train, write_synthetic
    from debias.jobs.audit import AuditConfig, write_audit
    from debias.jobs.outliers import OutlierConfig, write_outliers

    root = tmp_path_factory.mktemp("world")
    cwd = Path.cwd()
    os.chdir(root)  # every path the world records is relative, so copies of it work alike
    try:
        write_synthetic("data", n_faces=60, n_non_faces=60, size=32, seed=0)
        model = ModelConfig(image_size=32, latent_dim=8, filters=4, hidden=32)
        train(tiny_config(data="data", out="run", epochs=1, model=model))
        write_audit(AuditConfig(model="run", data="data", out="audit", options=_few()))
        write_outliers(OutlierConfig(model="run", data="data", out="out.csv"))
    finally:
        os.chdir(cwd)
    return root


def _few():  # type: ignore[no-untyped-def]
    from debias.fairness.audit import AuditOptions

    return AuditOptions(bootstrap=20)


def _write(path: str, text: str | bytes) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text)

    return damage


def _cut(path: str, keep: int) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / path).write_bytes((root / path).read_bytes()[:keep])

    return damage


def _remove(path: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        target = root / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return damage


def _vouched_csv(text: str) -> Callable[[Path], None]:
    """Replace out.csv and let out.json vouch for it: the CSV's own checks must catch it."""

    def damage(root: Path) -> None:
        (root / "out.csv").write_text(text)
        summary = json.loads((root / "out.json").read_text())
        summary["csv_sha256"] = files.sha256(root / "out.csv")
        (root / "out.json").write_text(json.dumps(summary))

    return damage


def _nothing(root: Path) -> None:
    pass


AUDIT = ["audit", "--model", "run", "--data", "data", "--bootstrap", "20", "--out", "a2"]
OUTLIERS = ["outliers", "--model", "run", "--data", "data", "--out", "o2.csv"]
REPORT = ["report", "run", "--audit", "audit", "--out", "r2"]
TRAIN = ["train", "--data", "data", "--epochs", "1", "--image-size", "32", "--filters", "4"]
TRAIN += ["--latent-dim", "8", "--hidden", "32", "--batch-size", "16", "--out", "t2"]

# (name, damage, command, what the one line must say; None: the command succeeds)
CASES = [
    # run folders
    ("config not JSON", _write("run/config.json", "{x"), AUDIT, "config.json: not valid JSON"),
    ("config empty", _write("run/config.json", "{}"), REPORT, "config.json: is incomplete"),
    ("config a list", _write("run/config.json", "[1]"), OUTLIERS, "holds a list, not a dict"),
    ("config cut", _cut("run/config.json", 40), ["train", "--resume", "run"], "not valid JSON"),
    ("config wrong type", _write("run/config.json", '{"train": 3, "data": {}}'), AUDIT, "damaged"),
    ("checkpoint cut", _cut("run/checkpoint.pt", 900), AUDIT, "damaged or cut short"),
    ("checkpoint empty", _write("run/checkpoint.pt", b""), ["train", "--resume", "run"], "cut"),
    ("checkpoint pickle", _write("run/checkpoint.pt", b"\x80\x04K\x01."), AUDIT, "bare Python"),
    ("density garbage", _write("run/density.pt", "x"), OUTLIERS, "density.pt: damaged"),
    ("samples missing", _remove("run/samples.csv"), REPORT, "debias train --resume run"),
    ("samples broken", _write("run/samples.csv", 'a\n"x'), REPORT, "samples.csv: not a readable"),
    ("samples columns", _write("run/samples.csv", "a,b\n1,2\n"), OUTLIERS, "lacks the column"),
    ("metrics broken", _write("run/metrics.jsonl", "{\n"), REPORT, "metrics.jsonl: not one JSON"),
    ("no checkpoint yet", _remove("run/checkpoint.pt"), AUDIT, "before its first epoch ended"),
    ("never started", _remove("run/config.json"), REPORT, "before it saved anything"),
    (
        "audit of another",
        _write("f.pt", "x"),
        ["report", "f.pt", "--audit", "audit"],
        "not of f.pt",
    ),
    ("run missing", _nothing, ["report", "nope", "--audit", "audit"], "nope: file not found"),
    # audit folders and outliers pairs
    ("audit not JSON", _write("audit/audit.json", "{"), REPORT, "audit.json: not valid JSON"),
    ("audit NaN", _write("audit/audit.json", '{"n": NaN}'), REPORT, "NaN is not allowed"),
    ("audit empty", _write("audit/audit.json", "{}"), REPORT, "audit.json: lacks 'config'"),
    ("outliers JSON cut", _cut("out.json", 30), [*REPORT, "--outliers", "out.csv"], "out.json"),
    (
        "outliers CSV swapped",
        _write("out.csv", "path\n"),
        [*REPORT, "--outliers", "out.csv"],
        "does not match out.json",
    ),
    (
        "outliers header only",
        _vouched_csv("path\n"),
        [*REPORT, "--outliers", "out.csv"],
        "out.csv: lacks the column",
    ),
    ("outliers JSON gone", _remove("out.json"), [*REPORT, "--outliers", "out.csv"], "not found"),
    ("outliers is a folder", _nothing, [*REPORT, "--outliers", "run"], "is a folder"),
    # predictions CSVs
    (
        "predictions header only",
        _write("p.csv", "y_true,y_pred,g\n"),
        ["audit", "--predictions", "p.csv"],
        "header but no rows",
    ),
    (
        "predictions one row",
        _write("p.csv", "y_true,y_pred,g\n1,1,a\n"),
        ["audit", "--predictions", "p.csv"],
        "no group column to audit by",
    ),
    (
        "predictions binary",
        _write("p.csv", b"\xff\xfe\x00\x00"),
        ["audit", "--predictions", "p.csv"],
        "cannot be read as a CSV",
    ),
    ("labels a folder", _nothing, [*TRAIN, "--labels", "run"], "is a folder, not a file"),
    # options
    ("threshold nan", _nothing, [*AUDIT, "--threshold", "nan"], "--threshold nan"),
    ("threshold 2", _nothing, [*AUDIT, "--threshold", "2"], "--threshold 2.0"),
    ("lr inf", _nothing, [*TRAIN, "--lr", "inf"], "--lr inf: must be a finite number"),
    ("seed negative", _nothing, [*TRAIN, "--seed", "-1"], "--seed -1"),
    ("workers negative", _nothing, [*TRAIN, "--num-workers", "-1"], "--num-workers -1"),
    ("hidden absurd", _nothing, [*TRAIN, "--hidden", "100000000"], "--hidden 100000000"),
    ("image absurd", _nothing, [*TRAIN, "--image-size", "100000"], "--image-size 100000"),
    ("outliers out not csv", _nothing, [*OUTLIERS[:-1], "o.txt"], "--out 'o.txt'"),
    ("resume other option", _nothing, ["train", "--resume", "run", "--bins", "3"], "Drop --bins"),
    ("resume finished", _nothing, ["train", "--resume", "run"], "already finished"),
    # destinations
    ("train out a file", _write("f", "x"), [*TRAIN[:-1], "f"], "f: is a file"),
    ("audit out a file", _write("f", "x"), [*AUDIT[:-1], "f"], "f: is a file"),
    ("report out a file", _write("f", "x"), [*REPORT[:-1], "f"], "f: is a file"),
    ("demo out a file", _write("f", "x"), ["demo", "--out", "f"], "f: is a file"),
    (
        "audit into a foreign folder",
        _write("mine/notes.txt", "keep me"),
        [*AUDIT[:-1], "mine"],
        "holds files that are not a debias audit",
    ),
    (
        "synth into a foreign folder",
        _write("mine/notes.txt", "keep"),
        ["data", "synth", "mine"],
        "not a synthetic data set",
    ),
    ("train into a finished run", _nothing, [*TRAIN[:-1], "run"], "already holds a run"),
    # successes that used to fail
    ("resume after samples lost", _remove("run/samples.csv"), ["train", "--resume", "run"], None),
    (
        "formula header",
        _write("p.csv", "y_true,y_pred,=cmd|calc\n1,1,a\n0,0,b\n1,0,a\n0,1,b\n"),
        ["audit", "--predictions", "p.csv", "--out", "a3"],
        None,
    ),
    ("report after bootstrap 0", _nothing, "bootstrap0", None),
]


@pytest.mark.parametrize(
    ("damage", "command", "expected"),
    [pytest.param(d, c, e, id=n) for n, d, c, e in CASES],
)
def test_adversarial_case(
    world: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path], None],
    command: list[str] | str,
    expected: str | None,
) -> None:
    root = tmp_path / "w"
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    damage(root)
    if command == "bootstrap0":
        first = runner.invoke(app, [*AUDIT[:-4], "--bootstrap", "0", "--out", "a0"])
        assert first.exit_code == 0, first.output
        command = ["report", "run", "--audit", "a0", "--out", "r0"]
    new_run = None
    if command[0] == "train" and "--out" in command:
        out = root / command[command.index("--out") + 1]
        new_run = None if out.exists() else out
    result = runner.invoke(app, command)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception | None) or result.exit_code in (0, 1)
    if expected is None:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: ") and "bug in debias" not in lines[0]
        assert expected in lines[0], lines[0]
        if new_run is not None:  # a training that failed leaves no half-made folder
            assert not new_run.exists()
    assert _leftovers(root) == []


def test_formula_headers_are_quoted_and_json_is_strict(world: Path, tmp_path: Path) -> None:
    table = "y_true,y_pred,=cmd|calc\n" + "".join(
        f"{i % 2},{i // 2 % 2},{'ab'[i % 2]}\n" for i in range(8)
    )
    (tmp_path / "p.csv").write_text(table)
    out = tmp_path / "a"
    result = runner.invoke(
        app, ["audit", "--predictions", str(tmp_path / "p.csv"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert "'=cmd|calc" in header and ",=cmd" not in header
    text = (out / "audit.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in audit.json"))
    assert json.loads(files.json_text({"x": float("nan"), "y": [float("inf"), 1.5]})) == {
        "x": None,
        "y": [None, 1.5],
    }


def _leftovers(root: Path) -> list[str]:
    """Temps, stage folders and lock files under ``root``."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(".*")
        if p.name.endswith(".lock") or any(f".{k}-" in p.name for k in ("tmp", "new", "old"))
    )


def test_foreign_folder_is_left_untouched(world: Path, tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(world, root)
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["report", str(root / "run"), "--out", str(root / "mine")])
    assert result.exit_code == 1
    assert (root / "mine" / "notes.txt").read_text() == "keep me"


def test_second_writer_gets_one_line_naming_the_holder(world: Path, tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(world, root)
    with runfolder.write_lock(root / "run"):  # this process holds the run, as a trainer would
        for command in (
            ["train", "--resume", str(root / "run"), "--epochs", "3"],
            ["audit", "--model", str(root / "run"), "--data", str(root / "data")],
            ["report", str(root / "run")],
        ):
            result = runner.invoke(app, command)
            assert result.exit_code == 1, result.output
            assert "another debias process is writing it" in result.stderr
            assert f"pid {os.getpid()}" in result.stderr
            if command[0] != "train":  # a reader's fix is to wait, not another --out
                assert "--out" not in result.stderr and "run this command again" in result.stderr
    # The lock is the kernel's: released with its holder, and its file removed with it
    assert not (root / "run" / runfolder.LOCK).exists()
    with files.lock(root / "x.lock", "x"):
        with pytest.raises(Exception, match="another debias process"):
            with files.lock(root / "x.lock", "x"):
                pass


def test_resume_after_data_changed_is_refused_unless_allowed(world: Path, tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(world, root)
    image = root / "data" / "face" / "00000.png"
    image.write_bytes(image.read_bytes() + b"\0" * 16)  # the same name, another file
    resume = ["train", "--resume", str(root / "run"), "--epochs", "2", "--data", str(root / "data")]
    result = runner.invoke(app, resume)
    assert result.exit_code == 1 and "changed since the run started" in result.stderr
    assert json.loads((root / "run" / "config.json").read_text())["train"]["epochs"] == 1
    result = runner.invoke(app, [*resume, "--allow-changed-data"])
    assert result.exit_code == 0, result.output


def test_resume_from_another_directory_and_with_a_lower_lr(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "w"
    shutil.copytree(world, root)
    # A run from before data paths were stored absolute: its data is relative to where it began
    config_path = root / "run" / "config.json"
    config = json.loads(config_path.read_text())
    config["train"]["data"] = "data"
    config_path.write_text(json.dumps(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["train", "--resume", str(root / "run"), "--epochs", "2"])
    assert result.exit_code == 1 and "--data" in result.stderr  # and --data is accepted:
    more = ["--data", str(root / "data"), "--lr", "1e-5"]
    result = runner.invoke(app, ["train", "--resume", str(root / "run"), "--epochs", "2", *more])
    assert result.exit_code == 0, result.output
    saved = json.loads(config_path.read_text())["train"]
    assert saved["lr"] == 1e-5 and saved["data"] == str(root / "data")
    assert len(runfolder.read_metrics(root / "run")) == 2


def _snapshot(folder: Path) -> dict[str, str]:
    """Each file's hash; audit.json without the time it was written."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "audit.json":
                audit = json.loads(data)
                audit["created"], audit["config"]["out"] = None, None  # when and where
                data = json.dumps(audit).encode()
            out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def test_kill_during_audit_leaves_the_old_set_or_the_new_one(world: Path, tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(world, root)
    command = [EXE, "audit", "--model", "run", "--data", "data", "--bootstrap", "200",
               "--overwrite", "--seed"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    old = _snapshot(root / "audit")
    # Kill at fractions of one audit's own duration, so that on a slow or busy machine some
    # kills still fall before the set lands and some after (fixed delays tested nothing there).
    start = time.perf_counter()
    subprocess.run([*command, "9", "--out", "timed"], cwd=root, env=env, check=True)
    duration = time.perf_counter() - start
    shutil.rmtree(root / "timed")
    landed = 0
    for i, fraction in enumerate((0.1, 0.3, 0.5, 0.7, 0.9, 1.5), start=1):
        delay = fraction * duration
        seed = str(i)  # each seed's audit is a set of its own
        process = subprocess.Popen([*command, seed, "--out", "audit"], cwd=root, env=env)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        now = _snapshot(root / "audit")
        if now != old:  # it landed before the kill: it must be that seed's whole set
            subprocess.run([*command, seed, "--out", "ref"], cwd=root, env=env, check=True)
            assert now == _snapshot(root / "ref"), f"killed after {delay} s: a mixed set"
            shutil.rmtree(root / "ref")
            old, landed = now, landed + 1
    assert 0 < landed < 6, "every audit landed or none did: the kills tested nothing"
    # The next writer removes what killed writers left behind
    subprocess.run([*command, "0", "--out", "audit"], cwd=root, env=env, check=True)
    assert _leftovers(root) == []


@pytest.mark.parametrize(
    "command",
    [
        [*AUDIT[:-1], "audit", "--overwrite"],
        [*REPORT[:-1], "report", "--overwrite"],
        ["data", "synth", "data", "--faces", "10", "--non-faces", "10"],
    ],
    ids=["audit", "report", "synth"],
)
def test_death_mid_write_leaves_the_previous_set_whole(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # A kill can fall between any two files of a set; dying at the set's last file is the
    # deterministic version of it (the subprocess test above cannot aim that well).
    root = tmp_path / "w"
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    if command[0] == "report":
        assert runner.invoke(app, command).exit_code == 0
    dest = Path(command[command.index("--out") + 1] if command[0] != "data" else "data")
    before = _snapshot(dest)
    real = files.atomic_write
    marker = {"audit": "audit.json", "report": "report.html", "data": "labels.csv"}[command[0]]

    def dying(path, write):  # type: ignore[no-untyped-def]
        if Path(path).name == marker:
            raise KeyboardInterrupt  # what a kill looks like from inside: nothing after it runs
        real(path, write)

    monkeypatch.setattr(files, "atomic_write", dying)
    if command[0] == "data":  # the synthetic writer writes labels.csv through pandas
        from debias.data import synth

        monkeypatch.setattr(synth, "_write_labels", lambda *a: dying(root / marker, None))
    result = runner.invoke(app, command)
    assert result.exit_code == 130, result.output
    assert _snapshot(dest) == before
    assert _leftovers(root) == []


def test_full_disk_and_read_only_are_one_line_and_leave_nothing(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "w"
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    small = root / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("this machine does not let the tests mount a small file system")
    try:
        # fill it to the last block
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={small / 'filler'}", "bs=4k"], capture_output=True
        )
        for command in (
            ["data", "synth", "small/s", "--faces", "20", "--non-faces", "20"],
            [*AUDIT[:-1], "small/a"],
            [*OUTLIERS[:-1], "small/o.csv"],
            [*TRAIN[:-1], "small/t"],
            [*REPORT[:-1], "small/r"],
        ):
            result = runner.invoke(app, command)
            assert result.exit_code == 1, result.output
            assert "small" in result.stderr and "the disk is full" in result.stderr, result.stderr
            assert sorted(p.name for p in small.iterdir()) == ["filler"], command
        (small / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        for command in (
            ["data", "synth", "small/s", "--faces", "5"],
            [*AUDIT[:-1], "small/a"],
            [*TRAIN[:-1], "small/t"],
        ):
            result = runner.invoke(app, command)
            assert result.exit_code == 1 and "read-only" in result.stderr, result.stderr
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_a_set_left_aside_between_two_renames_is_put_back(tmp_path: Path) -> None:
    # Where renameat2 cannot swap, the old set is renamed aside first; a kill before the new one
    # lands leaves no destination and an ".old-PID" folder of a dead process: the next writer
    # must restore it, not remove it as a stale temp.
    dest = tmp_path / "audit"
    aside = tmp_path / ".audit.old-999999999"  # no such process
    aside.mkdir()
    (aside / "audit.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with files.staged_folder(dest, marker="audit.json", what="a debias audit"):
            raise RuntimeError("the new set fails")
    assert (dest / "audit.json").read_text() == "{}" and not aside.exists()
