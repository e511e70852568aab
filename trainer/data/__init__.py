"""Dataset layer of the offline trainer: ``FORMAT:ROOT`` loaders, image/mask readers, one error type.

The synthetic generator lives in ``trainer.data.generate`` and is not imported here, so that
``python -m linewatch.trainer.data.generate`` runs cleanly and loaders do not pull in scikit-image.
"""

from linewatch.trainer.data.errors import DatasetError
from linewatch.trainer.data.images import (
    Frames,
    as_frames,
    concat_frames,
    image_size,
    imread_mask,
    imread_rgb,
    read_images,
    read_masks,
    take_frames,
)
from linewatch.trainer.data.registry import (
    FORMATS,
    DataFormat,
    list_tasks,
    load_task,
    parse_data_spec,
    register_format,
)
from linewatch.trainer.data.samples import GOOD, IMAGE_EXTENSIONS, Sample, TaskSplit

__all__ = [
    "FORMATS",
    "GOOD",
    "IMAGE_EXTENSIONS",
    "DataFormat",
    "DatasetError",
    "Frames",
    "Sample",
    "TaskSplit",
    "as_frames",
    "concat_frames",
    "image_size",
    "imread_mask",
    "imread_rgb",
    "list_tasks",
    "load_task",
    "parse_data_spec",
    "read_images",
    "read_masks",
    "register_format",
    "take_frames",
]
