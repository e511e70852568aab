"""One class per shared error: every part's name for it is the same class, so one except catches all."""

from __future__ import annotations

import pytest

from linewatch.contract.errors import BundleError, ConfigError


def test_every_part_names_the_same_config_error() -> None:
    import linewatch.deploy.refresh.config
    import linewatch.edge.config
    import linewatch.trainer.config

    assert (
        linewatch.edge.config.ConfigError
        is linewatch.trainer.config.ConfigError
        is linewatch.deploy.refresh.config.ConfigError
    )
    assert linewatch.edge.config.ConfigError is ConfigError and issubclass(ConfigError, ValueError)


def test_every_part_names_the_same_bundle_error() -> None:
    import linewatch.deploy.refresh.publish
    import linewatch.edge.model.bundle

    assert (
        linewatch.edge.model.bundle.BundleError is linewatch.deploy.refresh.publish.BundleError is BundleError
    )


def test_bundle_error_names_its_check_and_path() -> None:
    err = BundleError("files", "model.onnx is listed but missing", "/store/toy-v1")
    assert (err.check, err.path) == ("files", "/store/toy-v1")
    assert str(err) == "bundle /store/toy-v1: files check failed: model.onnx is listed but missing"
    assert str(BundleError("schema", "too new")) == "schema check failed: too new"
    with pytest.raises(BundleError):
        raise err
