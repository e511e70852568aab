"""One class per shared error: every part's name for it is the same class, so one except catches all."""

from __future__ import annotations

import pytest

from contract.errors import BundleError, ConfigError


def test_every_part_names_the_same_config_error() -> None:
    import deploy.refresh.config
    import edge.config
    import trainer.config

    assert edge.config.ConfigError is trainer.config.ConfigError is deploy.refresh.config.ConfigError
    assert edge.config.ConfigError is ConfigError and issubclass(ConfigError, ValueError)


def test_every_part_names_the_same_bundle_error() -> None:
    import deploy.refresh.publish
    import edge.model.bundle

    assert edge.model.bundle.BundleError is deploy.refresh.publish.BundleError is BundleError


def test_bundle_error_names_its_check_and_path() -> None:
    err = BundleError("files", "model.onnx is listed but missing", "/store/toy-v1")
    assert (err.check, err.path) == ("files", "/store/toy-v1")
    assert str(err) == "bundle /store/toy-v1: files check failed: model.onnx is listed but missing"
    assert str(BundleError("schema", "too new")) == "schema check failed: too new"
    with pytest.raises(BundleError):
        raise err
