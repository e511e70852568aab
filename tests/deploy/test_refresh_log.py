"""The refresh log: one valid JSON line per run, appended, safe with concurrent writers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from linewatch.deploy.refresh.runlog import RunRecord, append_record, read_records


def test_records_are_appended_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "refresh.jsonl"
    first = RunRecord(command="run", run_id="r1")
    with first.timed("train"):
        pass
    first.outcome, first.exit_code = "published", 0
    first.gate = {"passed": True, "reasons": []}
    first.versions = {"before": 6, "after": 7, "live": 7}
    append_record(path, first)
    append_record(path, RunRecord(command="rollback", run_id="r2", outcome="rolled-back"))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    docs = [json.loads(line) for line in lines]
    assert docs[0]["run_id"] == "r1" and docs[0]["versions"]["after"] == 7
    assert set(docs[0]) >= {
        "started",
        "finished",
        "outcome",
        "timings_s",
        "gate",
        "metrics",
        "versions",
        "host",
    }
    assert "train" in docs[0]["timings_s"]
    assert docs[1]["command"] == "rollback"


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "refresh.jsonl"
    big = {"message": "x" * 20_000}

    def writer(n: int) -> None:
        for i in range(25):
            append_record(path, {"writer": n, "i": i, **big})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(docs) == 100
    assert sorted((d["writer"], d["i"]) for d in docs) == [(n, i) for n in range(4) for i in range(25)]


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "refresh.jsonl"
    append_record(path, {"outcome": "published"})
    with path.open("a") as fh:
        fh.write('{"outcome": "fail')  # power cut mid-line
    assert read_records(path) == [{"outcome": "published"}]
    assert read_records(tmp_path / "absent.jsonl") == []
