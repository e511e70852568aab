"""Every registered method keeps the protocol the learner, the config and the exporter rely on.

Parametrised over the registry itself: a method folder added under `trainer/methods/`
is found by discovery and checked here with nothing to edit (the checks are in
`method_conformance.py`). The CLI help is checked to list what the registry holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from method_conformance import check_config_section, check_method, tiny_tasks
from trained_methods_kit import limit_threads

from linewatch.trainer.methods.registry import methods

REGISTERED = sorted(methods())


@pytest.fixture(scope="module")
def tasks():
    limit_threads()
    return tiny_tasks()


@pytest.fixture(autouse=True)
def _teacher_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Methods that cache artefacts (EfficientAD's distilled teacher) keep them in the test's temp dir."""
    monkeypatch.setenv("LINEWATCH_CACHE", str(tmp_path_factory.getbasetemp() / "conformance-cache"))


def test_the_builtin_methods_are_discovered() -> None:
    assert {"patchcore", "padim", "efficientad", "stfpm"} <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_config_section(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_config_section(methods()[name], tmp_path, monkeypatch)


@pytest.mark.parametrize("name", REGISTERED)
def test_fit_predict_export_and_state(name: str, tasks, tmp_path: Path) -> None:
    check_method(methods()[name], tasks, tmp_path)


def test_fit_help_lists_every_method_its_strategies_and_section(capsys: pytest.CaptureFixture[str]) -> None:
    from linewatch.trainer.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    # Whitespace removed: argparse wraps lines anywhere, hyphenated names ("per-task") included.
    text = "".join(capsys.readouterr().out.split())
    for name, cls in methods().items():
        assert f"{name}:{'|'.join(cls.strategies)}" in text and f"[{name}]" in text
