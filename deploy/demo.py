"""`make demo`: the whole line on one machine, without a GPU, in a few minutes.

    python -m linewatch.deploy.demo --out demo-out [--fast]

What it does, printing every step:

 1. generates two products of real-texture parts (brick, cell) with the one generator
    (`trainer.data.generate`), plus a third (camera) kept aside for the refresh;
 2. trains PatchCore with continual learning on the two (`linewatch-train fit`);
 3. makes a signing key, exports a signed bundle and publishes it into a bundle store
    (`<store>/<name>-v000001/` + `current`, the layout of `contract/store.py`);
 4. starts mosquitto on a free loopback port (`deploy/localbroker.py`) and the edge
    (`linewatch-edge run`) on a `dir:` camera (a line-scan camera's folder) that the demo
    feeds with the frames of generated line videos, with known defect frames;
 5. subscribes to the results like SCADA and prints a live table of verdicts;
 6. shows the third product to the running model (which has never seen it);
 7. drops the third product into the refresh drop directory and runs one refresh
    (`linewatch-refresh run`): update, gate, export, verify, publish, confirm, while the
    line keeps running;
 8. shows the version switch (`linewatch-refresh status --live`) and the third product's
    defects caught by the new model;
 9. a throughput burst, then the summary: frames, anomalies, fps, latency p99, and results
    lost (frames written into the camera folder minus distinct results received: must be 0).

Everything stays under --out (data, run, keys, store, logs, videos, summary.json); the
broker and the edge are stopped on exit, error or Ctrl-C included. Exit status 0 when
every check passed, 1 when one failed, 2 on bad usage. The plumbing lives beside this file:
`demo_kit.py` (console, child processes, config files) and `demo_line.py` (camera, subscriber,
numbers), so this one reads as the story.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from linewatch.deploy.demo_kit import (
    Children,
    DemoError,
    QuietJson,
    Steps,
    prepare_out,
    refresh_outcome,
    run_guarded,
    run_tool,
    say,
    short,
    write_edge_config,
    write_refresh_config,
)
from linewatch.deploy.demo_line import (
    HEADER,
    Background,
    Board,
    Camera,
    PhaseStats,
    judge,
    line_results,
    print_summary,
    wait_results,
)
from linewatch.deploy.localbroker import LocalBroker

__all__ = ["FAST", "FULL", "Plan", "main"]

MARKER = ".linewatch-demo"  # a folder with this file was made by the demo and may be wiped by it
CAMERA = "cam0"
SITE, LINE, STATION = "demo", "line1", "station1"
TOPIC_ROOT = f"linewatch/{SITE}/{LINE}/{STATION}/{CAMERA}"
FOLDERS = ("dataset", "incoming", "drop", "run", "keys", "store", "frames", "videos", "logs", "work")
Item = tuple[Any, str, int, Any]  # frame (RGB), product, index in its video, ground truth


@dataclass(frozen=True)
class Plan:
    """How big the demo is. FULL is `make demo`; FAST is the CI-sized variant (`--fast`).

    The products are generator sources on which PatchCore separates the generated defects
    well at 256 px (brick: image AUROC 1.00, cell 0.99, camera 1.00 with 30 training
    images); smaller images lose the finer defects, so FAST keeps the size and cuts counts.
    """

    name: str
    size: int  # generated image / model resolution (square)
    n_train: int  # good images per product in train/good (val_fraction of them calibrate)
    n_test: int  # good and defective test images per product (each)
    budget: int  # PatchCore memory-bank patches over all products
    products: tuple[str, ...] = ("brick", "cell")
    new_product: str = "camera"
    val_fraction: float = 0.4  # held-out good images that set the 0.5 threshold
    video_frames: int = 40  # frames of each known product's line video
    defect_every: int = 4  # every 4th video frame has a defect
    new_frames: int = 12  # frames of the new product shown before and after the refresh
    feed_fps: float = 4.0  # pace of the camera during the live phases
    background_fps: float = 1.0  # pace while the refresh trains (2 shared cores)
    burst: int = 48  # frames written at once to measure throughput
    report: bool = True  # trainer report.html
    max_drop: float = 0.05  # gate: 10+10 test images per product, one swapped pair is 0.01
    new_task_floor: float = 0.90
    confirm_timeout_s: float = 180.0


FULL = Plan("full", size=256, n_train=50, n_test=10, budget=3000)
FAST = Plan(
    "fast",
    size=256,
    n_train=24,  # fewer leave the scene-like camera product uncovered (its defects then pass)
    n_test=8,
    budget=1200,
    video_frames=16,
    new_frames=8,
    feed_fps=6.0,
    burst=16,
    report=False,
    new_task_floor=0.80,  # 8+8 test images and 14 training images: AUROC is coarse here
)


def cli(*args: str) -> list[str]:
    """A Linewatch command as this Python runs it (`python -m linewatch.trainer fit ...`)."""
    return [sys.executable, "-m", *args]


class Demo:
    def __init__(self, out: Path, plan: Plan) -> None:
        self.out, self.plan = out, plan
        self.d = {name: out / name for name in FOLDERS}
        self.children = Children()
        self.broker: LocalBroker | None = None
        self.board: Board | None = None
        self.summary: dict[str, Any] = {"plan": asdict(plan), "checks": {}}
        self.steps = Steps(9)

    def tool(
        self, label: str, argv: Sequence[str], log: str, echo: Callable[[str], bool] | None = None
    ) -> None:
        code = run_tool(label, argv, self.d["logs"] / log, echo=echo)
        if code != 0:
            raise DemoError(f"{label} failed with exit code {code} (full output: {self.d['logs'] / log})")

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.summary["checks"][name] = {"ok": bool(ok), "detail": detail}
        say(f"      check {'PASS' if ok else 'FAIL'}: {name}: {detail}")
        return ok

    # -- 1. data
    def generate(self) -> None:
        from linewatch.trainer.data.generate import generate_dataset, generate_video, read_video

        p = self.plan
        self.steps(
            "generate",
            f"Generating {', '.join(p.products)} ({p.n_train} good training images each, {p.size}x{p.size}) "
            f"and line videos with known defects (trainer.data.generate)",
        )
        common = {"n_train": p.n_train, "n_test_good": p.n_test, "n_test_defect": p.n_test, "size": p.size}
        generate_dataset(self.d["dataset"], list(p.products), seed=0, **common)
        generate_dataset(self.d["incoming"], [p.new_product], seed=0, **common)
        say(f"      dataset {self.d['dataset']} (MVTec layout: train/good, test/<defect>, ground_truth)")
        say(f"      kept aside for the refresh: {self.d['incoming'] / p.new_product}")
        self.videos: dict[str, list[Item]] = {}
        for product, n, every in [
            *((prod, p.video_frames, p.defect_every) for prod in p.products),
            (p.new_product, p.new_frames, 2),
        ]:
            path = self.d["videos"] / f"{product}.avi"
            truths = generate_video(
                path, product, n_frames=n, defect_every=every, size=p.size, fps=10, seed=1, codec="FFV1"
            )  # lossless, so the frames are the parts exactly as rendered
            frames = read_video(path)
            self.videos[product] = [(frames[t.index], product, t.index, t) for t in truths]
            kinds = ", ".join(sorted({t.defect_type for t in truths if t.defect_type}))
            say(
                f"      video {path.name}: {n} frames, {sum(t.defective for t in truths)} with a defect ({kinds})"
            )

    # -- 2. training
    def train(self) -> None:
        p = self.plan
        self.steps(
            "train",
            f"Training PatchCore with continual learning on {', '.join(p.products)}, one after the other",
        )
        config = self.d["work"] / "train.toml"
        config.write_text(
            "# demo-sized PatchCore; val_fraction of the good images calibrate the 0.5 threshold\n"
            f"val_fraction = {p.val_fraction}\n[patchcore]\nbudget = {p.budget}\n"
        )
        argv = [
            *cli("linewatch.trainer", "fit"),
            "--data", f"mvtec:{self.d['dataset']}", "--tasks", ",".join(p.products),
            "--method", "patchcore", "--strategy", "cl", "--out", str(self.d["run"]),
            "--config", str(config), "--image-size", str(p.size), "--no-progress",
            *([] if p.report else ["--no-report"]),
        ]  # fmt: skip
        self.tool("train", argv, "train.log")
        metrics = json.loads((self.d["run"] / "metrics.json").read_text())
        self.summary["trained"] = {
            "tasks": metrics["tasks"],
            "image_auroc": dict(zip(metrics["tasks"], metrics["matrix"]["image_auroc"][-1], strict=True)),
        }
        if (self.d["run"] / "report.html").exists():
            say(f"      report: {self.d['run'] / 'report.html'}")

    # -- 3. export, sign, publish
    def export(self) -> None:
        from linewatch.deploy.refresh.publish import LocalStore

        self.steps(
            "export", "Signing key, signed bundle (ONNX graph + memory bank + golden samples), bundle store"
        )
        keys, first = self.d["keys"], self.d["work"] / "bundle-first"
        self.tool("keygen", cli("linewatch.export", "keygen", "--out", str(keys)), "export.log")
        export = cli(
            "export", "--run", str(self.d["run"]), "--out", str(first), "--store", str(self.d["store"])
        )
        self.tool("export", [*export, "--sign-key", str(keys / "linewatch.key")], "export.log")
        report = QuietJson()
        verify = cli("linewatch.edge", "verify", "--bundle", str(first), "--key", str(keys / "linewatch.pub"))
        self.tool("verify", verify, "export.log", echo=report)
        say(f"      verify | {report.verdict()}")
        published = LocalStore(self.d["store"]).publish(first)
        shutil.rmtree(first)
        self.summary["versions"] = {"first": published.version}
        say(f"      published: {self.d['store'] / published.dirname}, current -> {published.dirname}")

    # -- 4. the line: broker, edge, subscriber, camera
    def start_line(self) -> None:
        self.steps("line", "Starting mosquitto and the edge on a dir: camera; subscribing like SCADA")
        self.broker = LocalBroker(self.d["work"] / "mosquitto", log=self.d["logs"] / "mosquitto.log").start()
        say(f"      mosquitto listening on 127.0.0.1:{self.broker.port}")
        self.board = Board(self.broker.port, TOPIC_ROOT)
        say(f"      subscribed to {TOPIC_ROOT}/result and /status")
        self.camera = Camera(self.d["frames"], self.board)
        edge_toml = write_edge_config(
            self.d["work"] / "edge.toml", outbox=self.d["work"] / "outbox.sqlite",
            public_key=self.d["keys"] / "linewatch.pub", site=SITE, line=LINE, station=STATION,
        )  # fmt: skip
        argv = [
            *cli("linewatch.edge", "run"), "--bundle", str(self.d["store"]),
            "--source", f"dir:{self.d['frames']}", "--camera", CAMERA,
            "--mqtt", self.broker.url, "--config", str(edge_toml),
        ]  # fmt: skip
        say(f"      $ {shlex.join(short(argv))}")
        self.edge = self.children.start("edge", argv, self.d["logs"] / "edge.log")
        first, log = self.summary["versions"]["first"], self.d["logs"] / "edge.log"
        self.board.wait_online(first, self.edge, log)
        say(f"      edge pid {self.edge.pid} serving v{first}; log {log}")

    def production(self) -> list[Item]:
        """Known products interleaved, as they come down the line."""
        streams = [self.videos[prod] for prod in self.plan.products]
        return [item for group in zip(*streams, strict=True) for item in group]

    def feed(self, items: Sequence[Item], phase: str) -> tuple[list[str], PhaseStats]:
        """Show `items` to the line at the plan's pace; the verdicts' statistics, kept in the summary."""
        assert self.board is not None
        say(HEADER)
        names = self.camera.feed(items, phase, self.plan.feed_fps)
        self.wait_results(names, phase)
        stats = PhaseStats.of(self.board.of(names))
        self.summary[phase.replace(" ", "_")] = asdict(stats)
        return names, stats

    def wait_results(self, names: Sequence[str], what: str) -> None:
        assert self.board is not None
        wait_results(self.board, names, what, self.edge, self.d["logs"] / "edge.log")

    # -- 5. live verdicts
    def run_line(self) -> None:
        p = self.plan
        self.steps(
            "verdicts", f"The line runs: {len(self.production())} parts at {p.feed_fps:g}/s; live verdicts"
        )
        _, stats = self.feed(self.production(), "production")
        say(f"      production: {stats.line()}")

    # -- 6. a product the model has never seen
    def before(self) -> None:
        p = self.plan
        self.steps(
            "before", f"A new product, {p.new_product}, comes down the line; the live model has never seen it"
        )
        _, b = self.feed(self.videos[p.new_product], "before refresh")
        say(f"      {p.new_product} before refresh: {b.line()}")
        self.before_stats = b
        if b.false_alarms or b.caught < b.defects:
            say(
                f"      -> v{self.summary['versions']['first']} cannot inspect {p.new_product}: "
                f"{b.false_alarms} of {b.good} good parts rejected, {b.defects - b.caught} of {b.defects} defects "
                "missed; an operator cannot tell a defect from a good part"
            )

    # -- 7. one refresh while the line keeps running
    def refresh(self) -> None:
        p, board = self.plan, self.board
        assert board is not None and self.broker is not None
        self.steps(
            "refresh",
            f"Dropping {p.new_product} into the drop directory and running one refresh while the line keeps running",
        )
        shutil.move(str(self.d["incoming"] / p.new_product), str(self.d["drop"] / p.new_product))
        self.refresh_config = write_refresh_config(
            self.d["work"] / "refresh.toml", self.d, port=self.broker.port, topic_root=TOPIC_ROOT,
            gate={"max_drop": p.max_drop, "new_task_floor": p.new_task_floor},
            confirm_timeout_s=p.confirm_timeout_s,
        )  # fmt: skip
        say(f"      refresh config: {self.refresh_config}")
        status = cli("linewatch.deploy.refresh", "status", "--live", "--config", str(self.refresh_config))
        self.tool("status", status, "refresh.log")
        board.quiet, before, t0 = True, len(board.verdicts), time.monotonic()
        say(f"      (verdicts keep coming at {p.background_fps:g}/s; the table pauses during the refresh)")

        def beat() -> None:
            vs = board.all()
            say(
                f"      line    | {len(vs) - before} verdicts during the refresh so far, "
                f"latest on v{vs[-1].version if vs else '?'}, edge status v{board.status_version()}"
            )

        with Background(self.camera, self.production(), p.background_fps, beat) as line:
            run = cli("linewatch.deploy.refresh", "run", "--config", str(self.refresh_config))
            code = run_tool("refresh", run, self.d["logs"] / "refresh.log", echo=QuietJson("refresh"))
            time.sleep(max(2.0, 3.0 / p.background_fps))  # a few frames after the switch, both versions shown
        board.quiet = False
        if line.error is not None:
            raise DemoError(f"the camera feeder failed: {line.error}")
        self.summary["refresh"] = {"exit_code": code, "wall_s": round(time.monotonic() - t0, 1)}
        self.during = line.names
        self.wait_results(line.names, "during refresh")
        self.summary["refresh"].update(refresh_outcome(self.d["work"] / "refresh.jsonl"))
        if code != 0:
            raise DemoError(f"the refresh exited with {code} (log: {self.d['logs'] / 'refresh.log'})")

    # -- 8. the switch, and the new product inspected
    def after(self) -> None:
        p, board = self.plan, self.board
        assert board is not None
        self.steps(
            "after",
            f"The switch, on the store and on the edge's status; {p.new_product} again, on the new model",
        )
        status = cli("linewatch.deploy.refresh", "status", "--live", "--config", str(self.refresh_config))
        self.tool("status", status, "refresh.log")
        during = board.of(self.during)
        switch = next((i for i in range(1, len(during)) if during[i].version != during[i - 1].version), None)
        self.summary["versions"]["after"] = (self.summary.get("refresh", {}).get("versions") or {}).get(
            "live"
        )
        self.summary["versions"]["edge_status"] = board.status_version()
        if switch is not None:
            a, b = during[switch - 1], during[switch]
            say(
                f"      the edge swapped models between frame {a.frame_id} (v{a.version}) and frame {b.frame_id} "
                f"(v{b.version}); {len(during)} frames during the refresh, none without a verdict"
            )
            self.summary["switch"] = {"last_old": a.frame_id, "first_new": b.frame_id}
        say(f"      verdicts during the refresh: {PhaseStats.of(during).line()}")
        self.summary["during_refresh"] = asdict(PhaseStats.of(during))
        _, self.after_stats = self.feed(self.videos[p.new_product], "after refresh")
        say(f"      {p.new_product} after refresh: {self.after_stats.line()}")

    # -- 9. throughput, then the summary
    def burst(self) -> None:
        p = self.plan
        assert self.board is not None
        self.steps("summary", f"Throughput burst ({p.burst} frames written at once), then the summary")
        prod = self.production()
        t0 = time.time()
        names = self.camera.feed([prod[i % len(prod)] for i in range(p.burst)], "burst", 0)
        self.wait_results(names, "burst")
        vs = self.board.of(names)
        span = max(v.received for v in vs) - t0
        self.summary["burst"] = {
            "frames": len(vs),
            "seconds": round(span, 2),
            "fps": round(len(vs) / span, 1),
        }
        say(f"      {len(vs)} frames scored and delivered in {span:.1f}s: {len(vs) / span:.1f} frames/s")

    def finish(self, wall_s: float) -> int:
        assert self.board is not None
        fps = (self.summary.get("burst") or {}).get("fps")
        r = line_results(self.board.all(), self.camera.written, self.board.duplicates, fps)
        self.summary["results"] = r
        for name, ok, detail in judge(
            self.summary,
            self.plan.new_product,
            getattr(self, "before_stats", None),
            getattr(self, "after_stats", None),
        ):
            self.check(name, ok, detail)
        self.summary.update(wall_s=round(wall_s, 1), step_s=self.steps.times)
        self.summary["ok"] = all(c["ok"] for c in self.summary["checks"].values())
        print_summary(self.plan.name, self.summary)
        return 0 if self.summary["ok"] else 1

    # -- driver
    def run(self) -> int:
        t0 = time.monotonic()
        say(f"Linewatch demo ({self.plan.name}): everything goes to {self.out}")
        prepare_out(self.out, MARKER, self.d.values())
        try:
            for step in (self.generate, self.train, self.export, self.start_line, self.run_line,
                         self.before, self.refresh, self.after, self.burst):  # fmt: skip
                step()
            self.steps.end()
        except BaseException:
            self.steps.end()
            self.stop()
            self.summary["wall_s"] = round(time.monotonic() - t0, 1)
            self.write_summary()
            raise
        self.stop()
        code = self.finish(time.monotonic() - t0)
        self.write_summary()
        return code

    def write_summary(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str) + "\n")

    def stop(self) -> None:
        """The edge first (it drains and publishes offline while the subscriber listens), then the broker."""
        self.summary["pids"] = {name: proc.pid for name, proc in self.children.procs}
        if self.broker is not None and self.broker.pid is not None:
            self.summary["pids"]["mosquitto"] = self.broker.pid
            say("      stopping the edge (drains its queues, publishes offline) and the broker")
        self.children.stop_all()
        if hasattr(self, "edge"):
            self.summary["edge_exit_code"] = self.edge.returncode
        if self.board is not None:
            self.board.close()
        if self.broker is not None:
            self.broker.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m linewatch.deploy.demo",
        description="The whole Linewatch line on this machine: data, training, signed bundle, broker, "
        "edge, live verdicts, one refresh with a new product, and a summary.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="working folder (replaced)")
    parser.add_argument(
        "--fast", action="store_true", help="CI-sized: fewer images and frames (about half the time)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(Demo(args.out.resolve(), FAST if args.fast else FULL).run)


if __name__ == "__main__":
    sys.exit(main())
