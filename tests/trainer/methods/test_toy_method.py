"""Adding a method takes one file and one decorator, and the conformance checks then run on it.

`toy_method.py` is that file. Each test here loads it (which registers it), uses it, and
unregisters it, so every other test sees the real registry. A folder with the same file,
added to a package of methods, is found by discovery alone.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from method_conformance import check_config_section, check_method, tiny_tasks
from pydantic import BaseModel, ValidationError
from trained_methods_kit import limit_threads

from linewatch.trainer.config import config_from_values
from linewatch.trainer.methods.registry import (
    available,
    discover,
    methods,
    register_method,
    unregister_method,
)

TOY_FILE = Path(__file__).with_name("toy_method.py")


def _run_file(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def toy() -> Iterator[type]:
    assert "toy" not in methods()
    try:
        yield _run_file(TOY_FILE, "toy_method_under_test").ToyMeanCells
    finally:
        unregister_method("toy")
    assert "toy" not in methods()
    with pytest.raises(ValidationError, match="toy"):
        config_from_values({"toy": {}})  # its section went with it


def test_the_decorator_is_the_whole_registration(toy: type) -> None:
    assert methods()["toy"] is toy and available()["toy"] == ("cl",)
    assert config_from_values({"method": "toy", "toy": {"grid": 3}}).section("toy").grid == 3


def test_the_toy_passes_the_conformance_checks(
    toy: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit_threads()
    check_config_section(toy, tmp_path, monkeypatch)
    check_method(toy, tiny_tasks(), tmp_path)


def test_the_cli_fits_and_evaluates_the_toy(toy: type, tmp_path: Path) -> None:
    from linewatch.trainer.cli import main
    from linewatch.trainer.data.generate import generate_dataset

    generate_dataset(
        tmp_path / "data", ["brick"], n_train=10, n_test_good=3, n_test_defect=3, size=64, seed=0
    )
    spec = f"mvtec:{tmp_path / 'data'}"
    args = ["--data", spec, "--tasks", "brick", "--method", "toy", "--image-size", "64", "--no-progress"]
    assert main(["fit", *args, "--no-report", "--out", str(tmp_path / "run")]) == 0
    assert main(["eval", "--run", str(tmp_path / "run"), "--data", spec, "--tasks", "brick"]) == 0


def test_a_folder_with_a_decorated_class_is_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "more_methods"
    (package / "toy").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "toy" / "__init__.py").write_text("")
    shutil.copy(TOY_FILE, package / "toy" / "method.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        discover("more_methods")
        assert methods()["toy"].__module__ == "more_methods.toy.method"
    finally:
        unregister_method("toy")
        for name in [m for m in sys.modules if m.split(".")[0] == "more_methods"]:
            del sys.modules[name]


def test_a_class_missing_part_of_the_protocol_or_a_taken_name_is_refused(toy: type) -> None:
    class NoConfig:
        name = "broken"
        strategies = ("cl",)

    with pytest.raises(TypeError, match="Config"):
        register_method(NoConfig)

    class Impostor(toy):  # a different class under a taken name
        pass

    with pytest.raises(ValueError, match="taken"):
        register_method(Impostor)

    class Required(BaseModel):
        needed: int

    class NoDefaults(toy):
        name = "no_defaults"
        Config = Required

    with pytest.raises(TypeError, match="default"):
        register_method(NoDefaults)
    assert "broken" not in methods() and "no_defaults" not in methods()
