import pytest

from linewatch.trainer.config import ConfigError, load_config


def test_env_overrides_file(tmp_path, monkeypatch):
    path = tmp_path / "train.toml"
    path.write_text('method = "padim"\nseed = 3\n[patchcore]\nbudget = 1000\n')
    monkeypatch.setenv("LINEWATCH_TRAIN_PATCHCORE__BUDGET", "500")
    cfg = load_config(path)
    assert (cfg.method, cfg.seed, cfg.patchcore.budget) == ("padim", 3, 500)


def test_cli_overrides_env(monkeypatch):
    monkeypatch.setenv("LINEWATCH_TRAIN_SEED", "9")
    assert load_config(seed=4).seed == 4
    assert load_config().seed == 9


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("image_size = [30, 30]\n", "image_size"),
        ("[patchcore]\nbudget = -1\n", "patchcore.budget"),
        ("typo = 1\n", "typo"),
    ],
)
def test_bad_values_name_the_key(tmp_path, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("method = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("method", "strategy"),
    [("patchcore", "cl"), ("padim", "cl"), ("efficientad", "replay"), ("stfpm", "replay")],
)
def test_default_strategy_is_one_the_method_accepts(method, strategy):
    from linewatch.trainer.learner import strategies_for

    cfg = load_config(method=method)
    assert cfg.strategy == strategy and cfg.strategy in strategies_for(method)
    assert load_config(method=method, strategy="naive").strategy == "naive"  # explicit wins


def test_unknown_method_is_refused_with_the_list(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('method = "patchcoar"\n')
    with pytest.raises(ConfigError, match="patchcore"):
        load_config(path)
