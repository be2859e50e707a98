"""Read a folder into :class:`ExampleSet` s: a study's per-example results and any
explanation files (``Explanation.save`` / ``pellucid explain``) found under it.

Only files inside the folder are read (symbolic links that leave it are skipped), and only
safe formats: JSON and safetensors, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from pellucid._warnings import PellucidWarning
from pellucid.explorer._data import ExampleSet

__all__ = ["ExplorerWarning", "inside", "load_folder"]

_KINDS = {4: "image", 2: "tabular", 3: "sequence"}


class ExplorerWarning(PellucidWarning):
    """A file under the explored folder was skipped (unreadable, stale or outside it)."""


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (after resolving links) lies under ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def _skip(path: Path, why: str) -> None:
    warnings.warn(f"explorer: skipped {str(path)!r}: {why}", ExplorerWarning, stacklevel=3)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "pellucid.examples" not in metadata:
                return None
            return metadata, {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types
        _skip(path, f"not a readable safetensors file ({exc})")
        return None


def _study_sets(root: Path) -> tuple[list[ExampleSet], set[Path]]:
    """The interpretability stage's per-example files, checked against its results."""
    results = root / "results" / "interpretability.json"
    if not results.is_file() or not inside(root, results):
        return [], set()
    try:
        models = json.loads(results.read_text())["result"]["models"]
    except (ValueError, KeyError, TypeError) as exc:
        _skip(results, f"not a study results file ({exc})")
        return [], set()
    sets: list[ExampleSet] = []
    used: set[Path] = set()
    for key, entry in models.items():
        record = entry.get("examples") if isinstance(entry, dict) else None
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            continue
        path = root / "results" / record["file"]
        if not path.is_file() or not inside(root, path):
            _skip(path, "missing or outside the folder")
            continue
        used.add(path.resolve())
        if _sha256(path) != record.get("sha256"):
            _skip(path, "its checksum differs from the one in interpretability.json (stale)")
            continue
        loaded = _read_safetensors(path)
        if loaded is not None:
            sets.append(_study_set(str(key), loaded[0], loaded[1], path.relative_to(root)))
    return sets, used


def _study_set(
    key: str, metadata: dict[str, str], tensors: dict[str, torch.Tensor], rel: Path
) -> ExampleSet:
    meta = json.loads(metadata["pellucid.examples"])
    variants = [str(v) for v in meta["variants"]]
    methods = [str(m) for m in meta["methods"]]
    out = ExampleSet(
        title=key,
        kind=str(meta.get("kind", "tabular")),
        inputs=tensors["inputs"],
        raw=tensors.get("raw") if meta.get("kind") == "tabular" else None,
        labels=tensors.get("labels"),
        feature_names=[str(n) for n in meta.get("feature_names", [])],
        class_names=[str(n) for n in meta.get("class_names", [])],
        variants=variants,
        methods=methods,
        source=[str(rel)],
    )
    for variant in variants:
        if f"{variant}/predictions" in tensors:
            out.predictions[variant] = tensors[f"{variant}/predictions"]
        for method in methods:
            prefix = f"{variant}/{method}/"
            if prefix + "attributions" not in tensors:
                continue
            out.attributions[(variant, method)] = tensors[prefix + "attributions"]
            found = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            curves: dict[str, torch.Tensor] = {
                k: found.pop(k) for k in ("deletion", "insertion", "fractions") if k in found
            }
            found.pop("attributions")
            out.metrics[(variant, method)] = found
            if "fractions" in curves:
                out.curves[(variant, method)] = curves
    return out


def _names(e: Any, key: str, count: int) -> list[str]:
    for holder in (e.extras, e.params):
        names = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
            if count < 0 or len(names) == count:
                return [str(n) for n in names]
    return []


def _explanation_files(root: Path, skip: set[Path]) -> list[tuple[Path, Any]]:
    from pellucid.explanation import Explanation

    found: list[tuple[Path, Any]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if not name.endswith(".safetensors") or path.resolve() in skip:
                continue
            if not inside(root, path):
                _skip(path, "a link to a file outside the folder")
                continue
            try:
                if not _is_explanation(path):
                    continue
                found.append((path, Explanation.load(path)))
            except (ValueError, KeyError, TypeError) as exc:
                _skip(path, str(exc))
    return found


def _is_explanation(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return "pellucid" in (handle.metadata() or {})
    except Exception:  # not safetensors at all
        return False


def _explanation_sets(root: Path, skip: set[Path]) -> list[ExampleSet]:
    """Explanation files grouped by their inputs; a file's folder names its variant."""
    groups: dict[str, ExampleSet] = {}
    for path, e in _explanation_files(root, skip):
        x = e.inputs.detach().float()
        digest = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:12]
        gkey = f"{tuple(x.shape)}:{digest}"
        rel = path.relative_to(root)
        if gkey not in groups:
            groups[gkey] = ExampleSet(
                title=f"explanations of {len(x)} inputs {tuple(x.shape[1:])}",
                kind=_KINDS.get(x.ndim, "tabular"),
                inputs=x,
            )
        group = groups[gkey]
        n_features = int(x[0].numel())
        group.feature_names = group.feature_names or _names(e, "feature_names", n_features)
        group.class_names = group.class_names or _names(e, "class_names", -1)
        labels = e.extras.get("labels")
        if group.labels is None and isinstance(labels, torch.Tensor) and labels.shape == (len(x),):
            group.labels = labels.long()
        variant = str(rel.parent) if str(rel.parent) != "." else "default"
        method = str(e.method)
        if (variant, method) in group.attributions:
            method = f"{method} [{rel.stem}]"
        if variant not in group.variants:
            group.variants.append(variant)
        if method not in group.methods:
            group.methods.append(method)
        group.attributions[(variant, method)] = e.attributions.detach().float()
        if isinstance(e.target, torch.Tensor) and e.target.shape == (len(x),):
            group.predictions.setdefault(variant, e.target.long())
        group.metrics[(variant, method)] = {
            k: v.detach().float()
            for k, v in e.extras.items()
            if isinstance(v, torch.Tensor) and v.shape == (len(x),) and v.is_floating_point()
        }
        group.source.append(str(rel))
    sets = list(groups.values())
    for group in sets:
        _agreement(group)
    return sets


def _agreement(group: ExampleSet) -> None:
    """Spearman agreement of |attributions| with the first variant's, per example."""
    from pellucid.metrics import spearman

    if len(group.variants) < 2:
        return
    first = group.variants[0]
    for (variant, method), attr in group.attributions.items():
        reference = group.attributions.get((first, method))
        if variant != first and reference is not None:
            group.metrics[(variant, method)]["agreement"] = spearman(reference, attr).float()


def load_folder(root: str | os.PathLike[str]) -> list[ExampleSet]:
    """Every example set under ``root``: a study's per-example results, then explanation
    files (any depth; the sub-folder of a file names its model variant).

    Raises:
        NotADirectoryError: `root` is not an existing directory.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise NotADirectoryError(f"`DIR` must be an existing directory; got {str(folder)!r}.")
    sets, used = _study_sets(folder)
    return sets + _explanation_sets(folder, used)
