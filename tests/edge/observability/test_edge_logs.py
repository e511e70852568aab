"""The repeat limiter: the first event at once, one summary per period with the count, a flush at the end."""

from __future__ import annotations

import logging

import pytest

from linewatch.edge.observability.logs import RepeatFilter, RepeatLimiter, set_repeat_every


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict]]:
    return [
        (r.getMessage(), {k: getattr(r, k, None) for k in ("repeated", "camera")}) for r in caplog.records
    ]


def test_first_then_one_summary_per_period_then_flush(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    lim = RepeatLimiter(logging.getLogger("t.limiter"), every_s=60, clock=clock)
    caplog.set_level(logging.INFO, "t.limiter")
    for _ in range(3000):  # a 3000/s storm for one second: one line
        lim.warning("broker unreachable", "cam0", camera="cam0")
        clock.now += 1 / 3000
    assert [m for m, _ in lines(caplog)] == ["broker unreachable"]
    assert lim.suppressed == 2999
    clock.now += 60
    assert lim.warning("broker unreachable", "cam0", camera="cam0")  # the period is over: a summary
    msg, fields = lines(caplog)[-1]
    assert msg == "broker unreachable (repeated 3000 times in 61 s)" and fields["repeated"] == 3000
    lim.warning("broker unreachable", "cam1", camera="cam1")  # another camera is another event
    assert len(caplog.records) == 3
    clock.now += 5
    for _ in range(7):
        lim.warning("broker unreachable", "cam0", camera="cam0")
    assert len(caplog.records) == 3
    assert lim.flush("cam0", camera="cam0") == 1  # the fault is over: the held count is written
    msg, fields = lines(caplog)[-1]
    assert msg == "broker unreachable (repeated 7 times in 5 s)" and fields["camera"] == "cam0"
    assert lim.flush("cam0") == 0  # nothing held any more
    lim.warning("broker unreachable", "cam0")  # right after a flush the run is still rate-limited
    assert len(caplog.records) == 4
    clock.now += 61
    lim.warning("broker unreachable", "cam1")  # nothing was held back for cam1: a plain line
    assert lines(caplog)[-1] == ("broker unreachable", {"repeated": None, "camera": None})


def test_default_period_follows_the_config(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    lim = RepeatLimiter(logging.getLogger("t.limiter2"), clock=clock)
    caplog.set_level(logging.INFO, "t.limiter2")
    try:
        set_repeat_every(5)
        assert lim.every_s == 5
        lim.info("source opened", "c")
        clock.now += 4
        assert not lim.info("source opened", "c")
        clock.now += 1
        assert lim.info("source opened", "c")
        assert len(caplog.records) == 2
        with pytest.raises(ValueError):
            set_repeat_every(0)
    finally:
        set_repeat_every(60)


def test_filter_thins_a_third_party_logger(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("t.paho")
    filt = RepeatFilter(every_s=10, clock=clock)
    logger.addFilter(filt)
    caplog.set_level(logging.DEBUG, "t.paho")
    try:
        for i in range(50):
            logger.error("failed to receive on socket: %s", f"reset {i}")
            logger.debug("Sending PINGREQ")  # below WARNING: left to the level filter
        clock.now += 11
        logger.error("failed to receive on socket: %s", "reset 50")
    finally:
        logger.removeFilter(filt)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "failed to receive on socket: reset 0",
        "failed to receive on socket: reset 50 (repeated 50 times in 11 s)",
    ]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 50
