"""`linewatch-export` end to end on a fitted PatchCore run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from linewatch.edge.model.bundle import open_bundle
from linewatch.edge.model.trt_build import tensorrt_available
from linewatch.export.cli import main

pytestmark = pytest.mark.slow


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    priv, pub = tmp_path / "keys" / "linewatch.key", tmp_path / "keys" / "linewatch.pub"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600 and pub.is_file()
    assert "key id" in capsys.readouterr().out
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 1  # never overwrites a key
    assert main(["keygen", "--out", str(tmp_path / "shared"), "--hmac"]) == 0
    assert (tmp_path / "shared" / "linewatch.hmac").is_file()


def test_python_dash_m_export(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "linewatch.export", "keygen", "--out", str(tmp_path / "k")],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "k" / "linewatch.pub").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["--out", "x"],
        ["--run", "r", "--out", "x", "--base", "b"],
        ["--run", "r", "--out", "x", "--max-batch", "0"],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    assert main(argv) == 2


def test_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--run", str(tmp_path), "--out", str(tmp_path / "b")]) == 1
    assert "cannot load run" in capsys.readouterr().err


def test_tensorrt_without_a_gpu_is_a_clear_refusal(fitted_runs, tmp_path: Path, capsys) -> None:
    if tensorrt_available()[0]:
        pytest.skip("TensorRT is available here")
    rc = main(["--run", str(fitted_runs("patchcore")), "--out", str(tmp_path / "b"), "--tensorrt"])
    assert rc == 1 and "TensorRT" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_full_then_bank_only_export(fitted_runs, signing_keys, tmp_path: Path, capsys) -> None:
    run = str(fitted_runs("patchcore"))
    store = tmp_path / "store"
    store.mkdir()
    priv, pub = (str(p) for p in signing_keys)
    argv = [
        "--run",
        run,
        "--out",
        str(store / "patchcore-v000001"),
        "--sign-key",
        priv,
        "--tar",
        "--max-batch",
        "4",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bundle size:" in out and "export time:" in out and "check tensorrt_ops: ok" in out
    b = open_bundle(store / "patchcore-v000001", key=pub, require_signature=True)
    assert b.version == 1 and b.max_batch == 4
    assert open_bundle(store / "patchcore-v000001.tar", key=pub).version == 1

    os.symlink("patchcore-v000001", store / "current")  # the store layout the refresh job keeps
    workspace = tmp_path / "ws"
    workspace.mkdir()
    argv = ["--run", run, "--out", str(store / "patchcore-v000002"), "--sign-key", priv, "--bank-only"]
    assert main([*argv, "--store", str(store)]) == 0
    assert "bank-only refresh patchcore v2" in capsys.readouterr().out
    refresh = open_bundle(store / "patchcore-v000002", key=pub, require_signature=True)
    assert refresh.is_bank_only and refresh.base.version == 1
