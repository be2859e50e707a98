"""Image folders: one sub-folder per class of PNG/JPEG files, read through Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pellucid.data import Dataset
from pellucid.sources._arrays import from_arrays
from pellucid.sources.models import SourceError
from pellucid.sources.spec import DataSpec

__all__ = ["IMAGE_SUFFIXES", "load_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _size(spec: DataSpec) -> tuple[int, int] | None:
    size = spec.size
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise SourceError(f"`data.size` must be a positive int or [height, width]; got {size!r}.")
    return int(pair[0]), int(pair[1])


def _read_folder(
    root: str, spec: DataSpec, classes: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    folder = Path(root)
    if not folder.is_dir():
        raise SourceError(
            f"`data.path` must be a folder of class sub-folders; {root!r} is not a folder."
        )
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not found:
        raise SourceError(
            f"{root!r}: expected one sub-folder per class (e.g. {root}/cat/1.png); found none."
        )
    if classes is not None and found != classes:
        raise SourceError(
            f"{root!r}: the test folder's classes {found} differ from the training folder's {classes}."
        )
    if spec.channels not in (1, 3):
        raise SourceError(f"`data.channels` must be 1 or 3; got {spec.channels!r}.")
    size = _size(spec)
    images, labels, shape = [], [], None
    for label, name in enumerate(found):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"{str(folder / name)!r}: expected PNG/JPEG images; found none.")
        for file in files:
            try:
                with Image.open(file) as opened:
                    image = opened.convert("L" if spec.channels == 1 else "RGB")
                    if size is not None:
                        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                    array = np.asarray(image, dtype=np.float64) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise SourceError(f"{str(file)!r}: expected a PNG/JPEG image; {exc}") from exc
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            if shape is None:
                shape = array.shape
            elif array.shape != shape:
                raise SourceError(
                    f"{str(file)!r} is {array.shape[2]}x{array.shape[1]} but earlier images are "
                    f"{shape[2]}x{shape[1]}; set `data.size` to resize them all."
                )
            images.append(array)
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), found


def _normalise(x: np.ndarray, spec: DataSpec) -> np.ndarray:
    if spec.mean is None and spec.std is None:
        return x
    channels = x.shape[1]
    mean = np.asarray(spec.mean if spec.mean is not None else (0.0,), dtype=np.float64)
    std = np.asarray(spec.std if spec.std is not None else (1.0,), dtype=np.float64)
    for name, value in (("mean", mean), ("std", std)):
        if value.size not in (1, channels):
            raise SourceError(
                f"`data.{name}` must have 1 or {channels} values (one per channel); got {value.size}."
            )
    if (std <= 0).any():
        raise SourceError(f"`data.std` must be > 0; got {std.tolist()}.")
    return (x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)


def load_image_folder(spec: DataSpec) -> Dataset:
    """Read ``spec.path`` (and ``spec.test_path``) into a :class:`Dataset` (N, C, H, W)."""
    x, y, classes = _read_folder(spec.path, spec, None)
    test = None
    if spec.test_path:
        tx, ty, _ = _read_folder(spec.test_path, spec, classes)
        if tx.shape[1:] != x.shape[1:]:
            raise SourceError(
                f"{spec.test_path!r} images are {tx.shape[1:]} but the training images "
                f"{x.shape[1:]}; set `data.size`."
            )
        test = (_normalise(tx, spec), ty)
    c, h, w = x.shape[1:]
    names = [f"c{k}_{i}_{j}" for k in range(c) for i in range(h) for j in range(w)]
    return from_arrays(
        spec, (_normalise(x, spec), y), test, feature_names=names, class_names=classes
    )
