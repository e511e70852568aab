"""The replay-against-naive assertion a trained method's continual test makes (one place, several methods)."""

from __future__ import annotations

from typing import Any

MIN_NAIVE_FORGETTING = 0.05  # image AUROC; below it the comparison is noise at test size


def table(metrics: dict[str, Any]) -> str:
    rows = [
        " ".join("  -  " if v is None else f"{v:.3f}" for v in r) for r in metrics["matrix"]["image_auroc"]
    ]
    return f"{metrics['strategy']:>6}: final {metrics['final']['image_auroc']:.3f} forgetting " + (
        f"{metrics['forgetting']['image_auroc']:.3f} | " + " / ".join(rows)
    )


def check_replay_halves_forgetting(method: str, naive: dict[str, Any], replay: dict[str, Any]) -> None:
    print(f"\n{method}\n" + table(naive) + "\n" + table(replay))
    assert naive["tasks"] == replay["tasks"] and naive["method"] == replay["method"] == method
    forget_naive = naive["forgetting"]["image_auroc"]
    forget_replay = replay["forgetting"]["image_auroc"]
    assert forget_naive >= MIN_NAIVE_FORGETTING, f"naive forgets too little to compare: {forget_naive:.3f}"
    assert forget_replay <= 0.5 * forget_naive, (forget_replay, forget_naive)
    assert replay["replay_buffer"]["images"] > 0 and naive["replay_buffer"]["images"] == 0
