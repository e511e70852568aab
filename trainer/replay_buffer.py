"""A fixed-size replay buffer of past tasks' images, stored compressed, balanced across tasks.

Why images and not features: the trained methods (EfficientAD, STFPM) change their
networks at every task, so stored features would go stale; images stay valid inputs.
Why compressed: the buffer ships with the run and is kept for every future `update`,
so its real cost is the encoded bytes, and `stats()` reports exactly those (PNG is
lossless, so replayed pixels equal the originals; JPEG trades a little fidelity for
about 3-5x less memory on photographs).

Balance rule: the capacity is shared equally by the tasks seen so far (water-filling:
a task with fewer images than its share leaves the rest to the others). When a task
arrives, every older task's share shrinks and a seeded random subset of its images is
dropped, so the buffer never grows past `capacity` and no task dominates it.

State is plain tensors (a uint8 byte blob, offsets, task ids) plus JSON, for
safetensors: no pickles.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

FORMATS = ("png", "jpeg")


def balanced_quotas(capacity: int, available: list[int]) -> list[int]:
    """Equal shares of `capacity`, capped by what each task has; leftovers go to tasks with more.

    Smallest tasks are served first so their unused share is spread over the others; the
    remainder of the integer division goes to the newest tasks that can take it.
    """
    n = len(available)
    quotas = [0] * n
    remaining = capacity
    order = sorted(range(n), key=lambda i: (available[i], i))
    for k, i in enumerate(order):
        quotas[i] = min(available[i], remaining // (n - k))
        remaining -= quotas[i]
    for i in reversed(range(n)):
        if remaining <= 0:
            break
        if quotas[i] < available[i]:
            quotas[i] += 1
            remaining -= 1
    return quotas


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """uint8 RGB (H, W, 3) -> PNG or JPEG bytes (OpenCV writes BGR, so convert first)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 6]
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("corrupt image in the replay buffer")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ReplayBuffer:
    """Past tasks' images as encoded bytes; `sample` draws a task uniformly, then an image."""

    def __init__(self, capacity: int = 300, fmt: str = "png", quality: int = 95):
        if capacity < 0:
            raise ValueError("replay capacity must be >= 0")
        if fmt not in FORMATS:
            raise ValueError(f"replay format must be one of {FORMATS}, got {fmt!r}")
        self.capacity = int(capacity)
        self.fmt = fmt
        self.quality = int(quality)
        self.tasks: list[str] = []
        self.entries: list[list[bytes]] = []  # per task, in self.tasks order
        self.image_shape: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return sum(len(e) for e in self.entries)

    def counts(self) -> dict[str, int]:
        return {t: len(e) for t, e in zip(self.tasks, self.entries, strict=True)}

    def add_task(self, task: str, images: np.ndarray, rng: np.random.Generator) -> None:
        """Store a share of `task`'s images (replacing that task's share if it is known).

        Older tasks are shrunk to their new share by dropping a random subset.
        """
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"replay images must be uint8 (N,H,W,3), got {images.dtype}{images.shape}")
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"replay images are {self.image_shape}, got {tuple(images.shape[1:])}")
        self.image_shape = tuple(int(s) for s in images.shape[1:])  # type: ignore[assignment]
        if task in self.tasks:
            j = self.tasks.index(task)
            self.entries[j] = []
        else:
            self.tasks.append(task)
            self.entries.append([])
            j = len(self.tasks) - 1
        available = [len(e) for e in self.entries]
        available[j] = len(images)
        quotas = balanced_quotas(self.capacity, available)
        for i, quota in enumerate(quotas):
            if i != j and len(self.entries[i]) > quota:
                keep = np.sort(rng.choice(len(self.entries[i]), quota, replace=False))
                self.entries[i] = [self.entries[i][k] for k in keep]
        pick = np.sort(rng.choice(len(images), quotas[j], replace=False))
        self.entries[j] = [encode_image(images[k], self.fmt, self.quality) for k in pick]

    def tasks_other_than(self, task: str | None) -> list[int]:
        return [i for i, t in enumerate(self.tasks) if t != task and self.entries[i]]

    def sample(self, n: int, rng: np.random.Generator, exclude: str | None = None) -> np.ndarray | None:
        """`n` decoded images, tasks drawn uniformly (so small shares are not starved); None if empty."""
        pool = self.tasks_other_than(exclude)
        if not pool or n <= 0:
            return None
        picks = rng.choice(pool, size=n)
        out = [decode_image(self.entries[i][int(rng.integers(len(self.entries[i])))]) for i in picks]
        return np.stack(out)

    def images(self, task: str) -> np.ndarray:
        """Every stored image of one task, decoded (for tests and reports)."""
        return np.stack([decode_image(b) for b in self.entries[self.tasks.index(task)]])

    def stats(self) -> dict[str, Any]:
        """The buffer's honest memory cost: encoded bytes, and what raw pixels would take."""
        n = len(self)
        nbytes = sum(len(b) for e in self.entries for b in e)
        raw = n * int(np.prod(self.image_shape)) if self.image_shape else 0
        return {
            "capacity": self.capacity,
            "format": self.fmt,
            "images": n,
            "per_task": self.counts(),
            "bytes": nbytes,
            "raw_bytes": raw,
            "compression_ratio": round(raw / nbytes, 3) if nbytes else None,
            "image_shape": list(self.image_shape) if self.image_shape else None,
        }

    # -- state (safetensors + JSON) ------------------------------------------------
    def state(self, prefix: str = "replay") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        blobs = [b for e in self.entries for b in e]
        lengths = np.array([len(b) for b in blobs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        data = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)
        task_ids = np.array([i for i, e in enumerate(self.entries) for _ in e], dtype=np.int64)
        tensors = {
            f"{prefix}.data": torch.from_numpy(data.copy()),
            f"{prefix}.offsets": torch.from_numpy(offsets),
            f"{prefix}.task": torch.from_numpy(task_ids),
        }
        meta = {
            "capacity": self.capacity,
            "format": self.fmt,
            "quality": self.quality,
            "tasks": list(self.tasks),
            "image_shape": list(self.image_shape) if self.image_shape else None,
        }
        return tensors, meta

    @classmethod
    def from_state(
        cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str = "replay"
    ) -> ReplayBuffer:
        buf = cls(int(meta["capacity"]), meta["format"], int(meta.get("quality", 95)))
        buf.tasks = list(meta["tasks"])
        buf.entries = [[] for _ in buf.tasks]
        shape = meta.get("image_shape")
        buf.image_shape = tuple(shape) if shape else None  # type: ignore[assignment]
        data = tensors[f"{prefix}.data"].numpy().tobytes()
        offsets = tensors[f"{prefix}.offsets"].tolist()
        for k, task_id in enumerate(tensors[f"{prefix}.task"].tolist()):
            buf.entries[int(task_id)].append(data[offsets[k] : offsets[k + 1]])
        return buf
