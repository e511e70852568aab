"""``linewatch-edge``: ``run`` the runtime, ``verify`` a bundle the way the box would load it, ``onboard`` a part.

Exit codes (scripts and systemd rely on them): 0 ok, 1 unexpected error, 2 bad usage or config,
3 bundle refused (manifest, hashes, signature...), 4 no inference backend available,
5 golden samples do not match on the chosen backend. `onboard` refusals (bad images, keys) exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from linewatch.edge.config import BACKEND_NAMES, ConfigError, EdgeConfig, load_config
from linewatch.edge.observability.logs import setup_logging

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUNDLE, EXIT_BACKEND, EXIT_GOLDEN = 0, 1, 2, 3, 4, 5

log = logging.getLogger("linewatch.edge.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linewatch-edge", description="Linewatch edge runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="score camera frames and publish verdicts over MQTT")
    run.add_argument(
        "--bundle", required=True, help="bundle directory or .tar, or a store with a 'current' link"
    )
    run.add_argument("--source", required=True, action="append", help="camera URI; repeat for more cameras")
    run.add_argument("--mqtt", help="broker URL mqtt://host:port or mqtts://host:port (overrides mqtt.url)")
    run.add_argument("--config", type=Path, help="TOML config file")
    run.add_argument(
        "--camera", action="append", help="camera name per --source, in order (default cam0, cam1...)"
    )
    run.add_argument("--max-frames", type=int, help="stop after this many verdicts per camera")
    run.add_argument(
        "--exit-at-end", action="store_true", help="exit when every source has ended (video files)"
    )
    run.add_argument("--backend", action="append", choices=BACKEND_NAMES, help="backend order override")
    run.add_argument("--metrics-port", type=int, help="Prometheus/healthz port (overrides metrics.port)")
    run.add_argument("--outbox", type=Path, help="outbox SQLite path (overrides outbox.path)")
    verify = sub.add_parser("verify", help="open, verify and golden-check a bundle on this box's backend")
    verify.add_argument("--bundle", required=True, type=Path)
    verify.add_argument(
        "--key", type=Path, help="public key / HMAC secret: the bundle must be signed with it"
    )
    verify.add_argument("--backend", choices=BACKEND_NAMES, help="check on this backend only")
    verify.add_argument("--config", type=Path, help="TOML config file (backend order, key)")
    onboard = sub.add_parser(
        "onboard",
        help="learn a part from 2-8 good images (or --remove one): a new bank-only version in the store",
    )
    onboard.add_argument("--bundle", required=True, type=Path, help="the bundle store (with 'current')")
    onboard.add_argument("--task", required=True, help="the part's name; an existing name is replaced")
    what = onboard.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", type=Path, help="folder of 2-8 good images")
    what.add_argument("--remove", action="store_true", help="remove the part instead")
    onboard.add_argument("--sign-key", type=Path, help="this box's private key (overrides onboard.key)")
    onboard.add_argument("--config", type=Path, help="TOML config file (reload keys, onboard key)")
    verify.add_argument(
        "--score", type=Path, nargs="+", help="also score these images with the verified backend"
    )
    verify.add_argument("--out", type=Path, help="write the JSON report here as well")
    return parser


def _config(args: argparse.Namespace) -> EdgeConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "mqtt", None):
        overrides.setdefault("mqtt", {})["url"] = args.mqtt
    if getattr(args, "exit_at_end", False):
        overrides.setdefault("camera", {})["at_end"] = "stop"
    if getattr(args, "metrics_port", None) is not None:
        overrides.setdefault("metrics", {})["port"] = args.metrics_port
    if getattr(args, "outbox", None) is not None:
        overrides.setdefault("outbox", {})["path"] = args.outbox
    return load_config(args.config, overrides)


def _run(args: argparse.Namespace, cfg: EdgeConfig) -> int:
    from linewatch.edge.inference.backends import BackendUnavailable
    from linewatch.edge.model.bundle import BundleError
    from linewatch.edge.runtime import EdgeRuntime

    if args.max_frames is not None and args.max_frames < 1:
        print("linewatch-edge: --max-frames must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        runtime = EdgeRuntime(cfg, args.bundle, args.source, args.camera, args.max_frames, args.backend)
    except ValueError as exc:
        print(f"linewatch-edge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal received; shutting down", extra={"signal": signal.Signals(signum).name})
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            runtime.start()
        except BundleError as exc:
            print(f"linewatch-edge: bundle refused: {exc}", file=sys.stderr)
            return EXIT_GOLDEN if exc.check == "golden" else EXIT_BUNDLE
        except BackendUnavailable as exc:
            print(f"linewatch-edge: {exc}", file=sys.stderr)
            return EXIT_BACKEND
        except OSError as exc:
            print(f"linewatch-edge: cannot load the bundle: {exc}", file=sys.stderr)
            return EXIT_BUNDLE
        runtime.wait(stop)
        return EXIT_OK
    finally:
        runtime.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _verify(args: argparse.Namespace, cfg: EdgeConfig) -> int:
    from linewatch.edge.inference.backends import BackendUnavailable, select_backend
    from linewatch.edge.model.bundle import BundleError, open_bundle
    from linewatch.edge.model.manager import is_store, store_target

    path = store_target(args.bundle) if is_store(args.bundle) else args.bundle
    key = args.key or cfg.reload.key
    try:
        bundle = open_bundle(
            path,
            key=key,
            require_signature=key is not None or cfg.reload.require_signature,
            box_keys=cfg.reload.box_keys if key is not None else (),
        )
    except BundleError as exc:
        print(f"linewatch-edge verify: REFUSED: {exc}", file=sys.stderr)
        return EXIT_BUNDLE
    try:
        selection = select_backend(bundle, cfg.backend, [args.backend] if args.backend else None)
    except BundleError as exc:
        print(f"linewatch-edge verify: GOLDEN MISMATCH: {exc}", file=sys.stderr)
        return EXIT_GOLDEN
    except BackendUnavailable as exc:
        print(f"linewatch-edge verify: NO BACKEND: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    report = {
        "ok": True,
        "bundle": str(path),
        "model": {"name": bundle.name, "version": bundle.version},
        "signature_verified": bundle.signature_verified,
        "backend": selection.backend.name,
        "golden": selection.report.as_dict(),
        "skipped_backends": selection.skipped,
    }
    if args.score:
        report["images"] = _score_images(bundle, selection.backend, args.score)
    selection.backend.close()
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return EXIT_OK


def _onboard(args: argparse.Namespace, cfg: EdgeConfig) -> int:
    from linewatch.edge.onboard.builder import onboard, remove
    from linewatch.edge.onboard.service import folder_images, policy_from
    from linewatch.edge.onboard.support import OnboardError

    policy = policy_from(cfg, args.sign_key)
    try:
        if args.remove:
            done = remove(args.bundle, args.task, policy)
        else:
            done = onboard(args.bundle, args.task, folder_images(args.images), policy, cfg.onboard.seed)
    except OnboardError as exc:
        print(f"linewatch-edge onboard: REFUSED: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(done.as_dict(), indent=2))
    return EXIT_OK


def _score_images(bundle: Any, backend: Any, paths: list[Path]) -> list[dict[str, Any]]:
    """Each image's score and verdict at the bundle's threshold, as the runtime would judge it."""
    import cv2

    from linewatch.edge.inference.frame_scorer import FrameScorer

    scorer = FrameScorer(bundle, backend)
    out: list[dict[str, Any]] = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            out.append({"file": str(path), "error": "not a readable image"})
            continue
        score = scorer.score(image).score
        out.append({"file": str(path), "score": round(score, 6), "anomalous": score >= bundle.threshold})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = _config(args)
    except ConfigError as exc:
        print(f"linewatch-edge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(cfg.logging.level, cfg.logging.json_lines, cfg.logging.repeat_every_s)
    try:
        return {"run": _run, "verify": _verify, "onboard": _onboard}[args.command](args, cfg)
    except Exception:
        log.exception("linewatch-edge failed")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
