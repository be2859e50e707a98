"""Run the study: each stage once (cached by its config), then write the report.

Layout of the output folder::

    OUT/results/<stage>.json   one file per stage, written atomically, with its config hash
                               and a checksum (a corrupt file is recomputed, with a warning)
    OUT/results/study.json     the merged config, versions and timings
    OUT/models/                trained reference models (safetensors)
    OUT/report/index.html      the self-contained report
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pellucid._io import atomic_write_json, atomic_write_text, jsonable
from pellucid.report.html import Paragraph, Section, Table, render_report
from pellucid.study._cache import read_stage, remove_orphans, write_stage

__all__ = ["check_out_dir", "run_study"]


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """Refuse an output path that is an existing file, or a folder that cannot be created
    or written (probed in its nearest existing folder), before anything is written.

    Raises:
        NotADirectoryError: `out` is an existing file.
        PermissionError: `out` cannot be created or written (probed in its nearest existing
            folder).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"`--out` must be a directory; {str(path)!r} is an existing file. "
            "Choose another path or remove the file."
        )
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:  # a throwaway file in the nearest existing folder (root ignores permission bits)
        if not existing.is_dir():
            raise NotADirectoryError(0, "not a folder")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise PermissionError(
            f"`--out` must be a folder pellucid can create and write; got {str(path)!r}, but "
            f"{str(existing)!r} cannot be written ({err.strerror or err}). Choose another --out."
        ) from None
    return path


def _stage_hash(name: str, config: dict[str, Any], upstream: str = "", sources: str = "") -> str:
    """Hash of what a stage's result depends on: its config, the seeds, the version, the
    user's files (``sources``: a changed data, weights or factory file invalidates every
    stage) and (through ``upstream``) every stage that ran before it, so a changed earlier
    stage invalidates the later ones."""
    from pellucid import __version__

    payload = {
        "upstream": upstream,
        "sources": sources,
        "stage": config[name],
        "seeds": config["seeds"],
        "quick": config["quick"],
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(jsonable(payload), sort_keys=True).encode()).hexdigest()[:16]


def run_study(
    config: dict[str, Any],
    out: str | os.PathLike[str],
    *,
    resume: bool = True,
    progress: bool | None = None,
) -> Path:
    """Run every stage in ``config["stages"]`` and write the report; returns its path.

    Raises:
        NotADirectoryError: `out` is an existing file.
        PermissionError: `out` cannot be created or written (probed in its nearest existing
            folder).
    """
    from pellucid import __version__
    from pellucid.study.context import StudyContext
    from pellucid.study.stages import STAGES
    from pellucid.study.user_models import sources_fingerprint

    out_dir = check_out_dir(out)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    for orphan in remove_orphans(out_dir):
        print(f"[pellucid study] removed {orphan}, left by an interrupted write", file=sys.stderr)
    ctx = StudyContext(
        out_dir=out_dir,
        seeds=list(config["seeds"]),
        quick=bool(config["quick"]),
        progress=progress,
        config=config,
        resume=resume,
    )
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    timings: dict[str, float] = {}
    cached: list[str] = []
    start = time.perf_counter()
    digest, sources = "", sources_fingerprint(config)
    for name in config["stages"]:
        stage = STAGES[name]
        path = out_dir / "results" / f"{name}.json"
        digest = _stage_hash(name, config, digest, sources)
        stored = read_stage(path, digest) if resume else None
        if stored is not None:
            ctx.results[name] = stored
            cached.append(name)
            ctx.log(f"stage {name}: cached")
            continue
        ctx.log(f"stage {name}: running")
        t0 = time.perf_counter()
        result = jsonable(stage.run(ctx, config[name]))
        timings[name] = time.perf_counter() - t0
        ctx.results[name] = json.loads(json.dumps(result))  # exactly what a rerun reads back
        write_stage(
            path,
            {
                "stage": name,
                "config_hash": digest,
                "seconds": timings[name],
                "config": config[name],
                "result": result,
            },
        )
        ctx.log(f"stage {name}: done in {timings[name]:.1f} s")
    sections = [_overview(config, timings, cached, time.perf_counter() - start)]
    for name in config["stages"]:
        section = STAGES[name].report(ctx, config[name], ctx.results[name])
        section.anchor = name
        sections.append(section)
    html = render_report(
        "pellucid study",
        sections,
        subtitle="Clipping, pruning and explanations of small reference networks, "
        "measured on embedded data.",
        footer=f"pellucid {__version__} · torch {torch.__version__} · "
        f"Python {platform.python_version()} · {platform.machine()}",
    )
    report = atomic_write_text(out_dir / "report" / "index.html", html)
    atomic_write_json(
        out_dir / "results" / "study.json",
        {
            "config": config,
            "seconds": timings,
            "cached": cached,
            "version": __version__,
            "torch": torch.__version__,
        },
    )
    return report


def _overview(
    config: dict[str, Any], timings: dict[str, float], cached: list[str], total: float
) -> Section:
    rows = [
        [name, "cached" if name in cached else "ran", timings.get(name)]
        for name in config["stages"]
    ]
    text = (
        f"Seeds: {', '.join(map(str, config['seeds']))}. "
        + (
            "Quick smoke run: small budgets, numbers are not meaningful. "
            if config["quick"]
            else ""
        )
        + f"Total time {total:.1f} s on {os.cpu_count()} CPU core(s). "
        + "To look at single examples, methods and model variants interactively, open "
        "explorer.html next to this page (written by `pellucid study`) or run "
        "`pellucid serve` on the study folder."
    )
    return Section(
        "Overview",
        [Paragraph(text), Table(["stage", "status", "seconds"], rows, caption="Stages")],
        anchor="overview",
    )
