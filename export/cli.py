"""`linewatch-export`: a trainer run -> a signed, verified model bundle.

    linewatch-export --run RUN_DIR --out BUNDLE_DIR [--tensorrt] [--fp16] [--int8] [--sign-key FILE]
                     [--bank-only [--base BUNDLE]] [--store DIR] [--max-batch N]
                     [--version N] [--tar] [--name NAME] [--task TASK]
    linewatch-export keygen --out KEY_DIR [--hmac]

Exit status: 0 written, 1 refused (the message says which check), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _keygen(argv: Sequence[str]) -> int:
    from linewatch.edge.model import signing

    p = argparse.ArgumentParser(prog="linewatch-export keygen", description="Create a signing key.")
    p.add_argument("--out", required=True, type=Path, help="key directory")
    p.add_argument("--hmac", action="store_true", help="a shared HMAC-SHA256 secret instead of Ed25519")
    args = p.parse_args(argv)
    try:
        if args.hmac:
            path = signing.generate_hmac_key(args.out / "linewatch.hmac")
            key = signing.load_key(path)
            print(f"HMAC secret: {path} (key id {key.key_id}); copy it to the boxes over a secure channel")
        else:
            priv, pub = signing.generate_keypair(args.out)
            key = signing.load_key(pub)
            print(f"private key: {priv} (keep it on the export machine)")
            print(f"public key:  {pub} (install on the boxes; key id {key.key_id})")
    except (signing.SignatureError, OSError) as e:
        print(f"linewatch-export keygen: {e}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="linewatch-export",
        description="Export a trainer run as a model bundle (ONNX graph, data arrays, golden samples, "
        "signed manifest, optional TensorRT engines). Also: `linewatch-export keygen --out KEY_DIR`.",
    )
    p.add_argument("--run", required=True, type=Path, help="trainer run directory")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write (replaced atomically)")
    p.add_argument(
        "--tensorrt", action="store_true", help="also build TensorRT engines (needs an NVIDIA GPU)"
    )
    p.add_argument("--fp16", action="store_true", help="with --tensorrt: build an FP16 engine besides FP32")
    p.add_argument(
        "--int8",
        action="store_true",
        help="INT8 graph (QDQ backbone, calibrated on training images); golden samples get INT8 tolerances",
    )
    p.add_argument("--int8-frames", type=int, default=32, help="with --int8: calibration frames")
    p.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) or HMAC secret file")
    p.add_argument(
        "--bank-only", action="store_true", help="refresh bundle: data arrays only, reuses a base graph"
    )
    p.add_argument("--base", type=Path, help="with --bank-only: the full bundle it applies to")
    p.add_argument(
        "--store", type=Path, help="bundle store it will be published into (versions, bank-only base)"
    )
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the graph and engines accept")
    p.add_argument("--version", type=int, help="explicit model version (must exceed every existing one)")
    p.add_argument("--tar", action="store_true", help="also write BUNDLE_DIR.tar")
    p.add_argument("--name", help="model name (default: the method name)")
    p.add_argument("--task", help="for strategy=single runs: which task's model to export")
    p.add_argument("--golden", type=int, default=4, help="number of golden frames (2-4 recommended)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 parses on TensorRT 8.6 and 10.x)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "legacy"), default="auto")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace")
    p.add_argument(
        "--max-intermediate-mb", type=int, default=4096, help="bound on the 3 largest intermediates"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["keygen"]:
        return _keygen(args_in[1:])
    p = _parser()
    try:
        args = p.parse_args(args_in)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if args.base and not args.bank_only:
        p.print_usage(sys.stderr)
        print("linewatch-export: --base only makes sense with --bank-only", file=sys.stderr)
        return 2
    if args.int8 and (args.tensorrt or args.bank_only):
        print(
            "linewatch-export: --int8 makes a new graph: not with --bank-only (a refresh keeps its base's "
            "precision) nor --tensorrt (boxes build INT8 engines from the QDQ graph)",
            file=sys.stderr,
        )
        return 2
    if args.max_batch < 1 or not 1 <= args.golden <= 8:
        print("linewatch-export: --max-batch must be >= 1 and --golden in 1..8", file=sys.stderr)
        return 2

    from linewatch.edge.model.bundle import BundleError
    from linewatch.edge.model.signing import SignatureError
    from linewatch.export.bundle_writer import write_bundle
    from linewatch.export.checks import CheckLimits
    from linewatch.export.onnx_export import ExportError
    from linewatch.export.run_source import calibration_frames, load_run_for_export

    t0 = time.perf_counter()
    try:
        run = load_run_for_export(args.run, task=args.task, name=args.name, n_golden=args.golden)
        precisions = ("fp32", "fp16") if args.fp16 else ("fp32",)
        int8 = calibration_frames(run.info, run.graph.input_hw, args.int8_frames) if args.int8 else None
        written = write_bundle(
            run.graph,
            args.out,
            info=run.info,
            golden_inputs=run.golden_inputs,
            max_batch=args.max_batch,
            version=args.version,
            sign_key=args.sign_key,
            tar=args.tar,
            bank_only=args.bank_only,
            base=args.base,
            tensorrt=args.tensorrt,
            precisions=precisions,
            workspace_bytes=args.workspace_mb * 2**20,
            opset=args.opset,
            exporter=args.exporter,
            limits=CheckLimits(max_top_k_bytes=args.max_intermediate_mb * 2**20),
            store=args.store,
            int8_calibration=int8,
        )
    except (ExportError, BundleError, SignatureError, OSError, ValueError) as e:
        print(f"linewatch-export: refused: {e}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    m = written.manifest
    kind = "bank-only refresh" if m.get("bank_only") else "bundle"
    print(f"{kind} {m['model']['name']} v{m['model']['version']} -> {written.path}")
    print(f"  golden parity (torch vs onnxruntime): {written.parity}")
    if "quantization" in m:
        q = m["quantization"]
        print(
            f"  INT8: {q['format']}, {q['calibration_frames']} calibration frames; golden tolerances "
            f"score {m['golden']['atol_score']}, map {m['golden']['atol_map']}"
        )
    if written.static is not None:
        for r in written.static.results:
            print(f"  check {r.name}: {'ok' if r.ok else 'FAILED'}: {r.detail}")
    for e in m.get("engines", []):
        print(f"  engine {e['file']}: {e['precision']} TensorRT {e['tensorrt_version']} on {e['gpu_name']}")
    print(f"  signed: {'yes' if args.sign_key else 'no'}; tar: {written.tar_path or 'no'}")
    print(f"  bundle size: {written.size_bytes / 1e6:.2f} MB; export time: {total:.1f}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
