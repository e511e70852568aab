"""`linewatch-train`: fit, update (continual step), eval, and generate (synthetic data)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

from linewatch.trainer.backbones import BackboneWeightsError
from linewatch.trainer.config import ConfigError, TrainConfig, load_config
from linewatch.trainer.data import DatasetError
from linewatch.trainer.runs import RunError


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError("give at least one task, e.g. --tasks brick,grass")
    return tasks


def _size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _method_help() -> tuple[str, str, str]:
    """(--method help, --strategy help, the config sections epilog), all from the method registry."""
    from linewatch.trainer.config import TrainConfig
    from linewatch.trainer.learner import PROTOCOL_STRATEGIES
    from linewatch.trainer.methods.registry import methods

    registered = methods()
    default = TrainConfig.model_fields["method"].default
    method = f"{' | '.join(registered)} (default {default})"
    per_method = "; ".join(f"{name}: {' | '.join(cls.strategies)}" for name, cls in registered.items())
    strategy = f"{per_method}; any method: {' | '.join(PROTOCOL_STRATEGIES)}. Default: the method's first"
    sections = [
        textwrap.fill(
            f"[{name}] {', '.join(cls.Config.model_fields)}",
            78,
            initial_indent="  ",
            subsequent_indent="    ",
        )
        for name, cls in registered.items()
    ]
    epilog = "config file sections (or LINEWATCH_TRAIN_<METHOD>__<KEY>):\n" + "\n".join(sections)
    return method, strategy, epilog


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linewatch-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    method_help, strategy_help, sections_help = _method_help()
    fit = sub.add_parser(
        "fit",
        help="learn a sequence of tasks into a new run directory",
        epilog=sections_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("--data", required=True, help="FORMAT:ROOT, e.g. mvtec:/data/mvtec")
    fit.add_argument("--tasks", required=True, type=_tasks)
    fit.add_argument("--method", help=method_help)
    fit.add_argument("--strategy", help=strategy_help)
    fit.add_argument("--out", required=True, type=Path)
    fit.add_argument("--config", type=Path, help="TOML file; LINEWATCH_TRAIN_* variables override it")
    fit.add_argument("--backbone")
    fit.add_argument("--backbone-weights", type=Path, help="local weights file when the hub is unreachable")
    fit.add_argument("--image-size", type=_size, help="H[xW] model resolution (default 256)")
    fit.add_argument(
        "--geometry",
        choices=("auto", "resize", "letterbox", "tile"),
        help="how frames become model inputs. auto (default): tile frames much larger than the model "
        "input, resize the others; the choice and why are printed and saved with the run",
    )
    fit.add_argument("--overlap", type=int, help="tile: px shared by neighbouring tiles")
    fit.add_argument("--scale", type=float, help="tile: rescale frames by this before tiling (1 = native)")
    fit.add_argument("--margin", type=int, help="tile: px of mirrored border around the frame")
    fit.add_argument(
        "--context",
        action=argparse.BooleanOptionalAction,
        help="tile: also score the whole frame resized and average its map with the tiles'",
    )
    fit.add_argument("--seed", type=int)
    fit.add_argument(
        "--device",
        help="trained methods: where training (and EfficientAD's teacher distillation) runs; "
        "default auto = cuda when torch sees a GPU, else cpu",
    )
    fit.add_argument(
        "--teacher",
        type=Path,
        help="efficientad: a teacher file from `linewatch-train distill-teacher` (e.g. distilled on a GPU "
        "elsewhere) instead of distilling one here; checked before any data is read",
    )
    fit.add_argument("--single-run", type=Path, help="a `single` run on the same tasks, for relative_gap")
    fit.add_argument("--no-progress", action="store_true")
    fit.add_argument("--no-report", action="store_true")

    upd = sub.add_parser("update", help="continual step: learn new tasks, keep the old ones")
    upd.add_argument("--run", required=True, type=Path)
    upd.add_argument("--data", required=True)
    upd.add_argument("--tasks", required=True, type=_tasks)
    upd.add_argument("--single-run", type=Path)

    ev = sub.add_parser("eval", help="evaluate a run on tasks' test sets")
    ev.add_argument("--run", required=True, type=Path)
    ev.add_argument("--data", required=True)
    ev.add_argument("--tasks", required=True, type=_tasks)
    ev.add_argument("--out", type=Path, help="write the metrics JSON here (default: print it)")

    gen = sub.add_parser("generate", help="write synthetic MVTec-layout tasks (see trainer.data.generate)")
    gen.add_argument("args", nargs=argparse.REMAINDER)

    from linewatch.trainer.methods.efficientad.distill_cli import add_arguments as add_distill_arguments

    ext = sub.add_parser(
        "train-extractor",
        help="few-shot: SimSiam fine-tuning of a backbone on good images of many tasks (for --backbone-weights)",
    )
    ext.add_argument("--data", required=True, help="FORMAT:ROOT of the tasks (only train/good is read)")
    ext.add_argument("--tasks", required=True, type=_tasks, help="comma-separated tasks to aggregate")
    ext.add_argument("--out", required=True, type=Path, help="weights file; its record goes to OUT.json")
    ext.add_argument("--backbone", default="tf_efficientnet_lite0")
    ext.add_argument("--image-size", type=_size, default=(224, 224))
    ext.add_argument("--steps", type=int, default=300)
    ext.add_argument("--batch", type=int, default=16)
    ext.add_argument("--lr", type=float, default=1e-4)
    ext.add_argument("--seed", type=int, default=0)
    dist = sub.add_parser("distill-teacher", help="distil EfficientAD's PDN teacher offline, cached")
    add_distill_arguments(dist)
    return p


def _geometry_flags(args: argparse.Namespace) -> dict | None:
    """The geometry keys given on the command line (they override the file and the environment)."""
    given = {
        "mode": args.geometry,
        "overlap": args.overlap,
        "scale": args.scale,
        "margin": args.margin,
        "context": args.context,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


def _method_flags(args: argparse.Namespace, method: str | None, config: Path | None) -> dict | None:
    """`--device` and `--teacher` as keys of the method's section (they override the file)."""
    given = {k: v for k, v in (("device", args.device), ("teacher", args.teacher)) if v is not None}
    if not given:
        return None
    if method is None:  # the method comes from the file or the environment
        method = load_config(config).method
    from linewatch.trainer.methods.registry import method_class

    fields = method_class(method).Config.model_fields
    unknown = [f"--{k}" for k in given if k not in fields]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a setting of method {method}")
    return {method: given}


def _announce_teacher(cfg: TrainConfig) -> None:
    """EfficientAD: say up front which teacher the run uses, or that (and where) it distils one.

    A given `--teacher` is checked here, before any data is read, so a wrong file fails at once."""
    if cfg.method != "efficientad":
        return
    from linewatch.trainer.methods.efficientad.distill import default_cache_dir
    from linewatch.trainer.methods.efficientad.method import check_teacher
    from linewatch.trainer.methods.registry import create_method

    section = cfg.section("efficientad")
    if section.teacher:
        _, record = check_teacher(section.teacher, section)
        print(
            f"EfficientAD teacher: {section.teacher} (distilled on {record.get('device')}, key {record.get('key')})"
        )
        return
    method = create_method(cfg)
    dcfg = method.distill_config()
    path = (section.teacher_cache or default_cache_dir()) / dcfg.filename()
    if path.is_file():
        print(f"EfficientAD teacher: cached {path}")
        return
    kind = "GPU (published recipe)" if method.device.type == "cuda" else "CPU (the CPU budget; see README)"
    print(
        f"EfficientAD teacher: none cached; the first task starts by distilling one on this {kind}: "
        f"{dcfg.steps} steps of {dcfg.batch_size} images at {dcfg.train_hw[0]} px, then cached at {path}. "
        "The time it takes is printed after the first steps. To skip it: --teacher FILE."
    )


def _print_table(metrics: dict) -> None:
    names = ("image_auroc", "image_f1", "pixel_auroc", "pixel_aupr", "aupro")
    print(f"\n{metrics['method']} / {metrics['strategy']} on {', '.join(metrics['tasks'])}")
    print(f"{'task':<14}" + "".join(f"{n:>13}" for n in names))
    last = {n: metrics["matrix"][n][-1] for n in names}
    for j, task in enumerate(metrics["tasks"]):
        cells = [last[n][j] if j < len(last[n]) else None for n in names]
        print(f"{task:<14}" + "".join(f"{'-':>13}" if c is None else f"{c:>13.3f}" for c in cells))
    for key in ("final", "forgetting"):
        if key in metrics:
            vals = [metrics[key].get(n) for n in names]
            print(f"{key:<14}" + "".join(f"{'-':>13}" if v is None else f"{v:>13.3f}" for v in vals))
    if "task_inference_accuracy" in metrics:
        print(f"task inference accuracy: {metrics['task_inference_accuracy']:.3f}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # `generate` passes its own options through to trainer.data.generate.
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command != "generate":
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    from linewatch.trainer import continual

    try:
        if args.command == "generate":
            from linewatch.trainer.data.generate import main as generate_main

            return generate_main([*extra, *args.args])
        if args.command == "distill-teacher":
            from linewatch.trainer.methods.efficientad.distill_cli import run as distill_run

            return distill_run(args)
        if args.command == "train-extractor":
            from linewatch.trainer.simsiam import SimSiamConfig, train_extractor

            scfg = SimSiamConfig(
                backbone=args.backbone, image_size=args.image_size, steps=args.steps, batch=args.batch,
                lr=args.lr, seed=args.seed,
            )  # fmt: skip
            record = train_extractor(args.data, args.tasks, args.out, scfg)
            print(f"extractor written to {args.out} (record {args.out}.json, {record['seconds']} s)")
            return 0
        if args.command == "fit":
            cfg = load_config(
                args.config,
                method=args.method,
                strategy=args.strategy,
                backbone=args.backbone,
                backbone_weights=args.backbone_weights,
                image_size=args.image_size,
                geometry=_geometry_flags(args),
                seed=args.seed,
                progress=False if args.no_progress else None,
                report=False if args.no_report else None,
                **(_method_flags(args, args.method, args.config) or {}),
            )
            _announce_teacher(cfg)
            metrics = continual.fit(cfg, args.data, args.tasks, args.out, args.single_run)
            _print_table(metrics)
            reason = metrics.get("geometry", {}).get("reason")
            print(f"\ngeometry: {reason or metrics.get('geometry', {}).get('mode')}")
            print(f"run written to {args.out}")
        elif args.command == "update":
            metrics = continual.update(args.run, args.data, args.tasks, args.single_run)
            _print_table(metrics)
        elif args.command == "eval":
            metrics = continual.evaluate(args.run, args.data, args.tasks)
            text = json.dumps(metrics, indent=1)
            if args.out:
                args.out.write_text(text)
                print(f"metrics written to {args.out}")
            else:
                print(text)
    except (ConfigError, DatasetError, BackboneWeightsError, RunError, ValueError) as exc:
        print(f"linewatch-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
