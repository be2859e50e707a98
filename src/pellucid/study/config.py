"""Study configuration: built-in defaults, ``--quick`` overrides, and a TOML file on top.

Top-level keys: ``seeds`` (list of ints), ``stages`` (names, in order) and one table per
stage holding that stage's keys. Unknown keys are refused with the closest suggestion.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

from pellucid._validation import did_you_mean
from pellucid.study.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "build_config", "read_config_file"]


#: The largest seed: numpy's generators take seeds below 2**32.
MAX_SEED = 2**32 - 1


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML config; syntax errors name the line and column. Relative file paths of
    user models and their data are read from the config file's folder (where they exist).

    Raises:
        ConfigError: `path` is not an existing file, not UTF-8, or not valid TOML (the message names
            the line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"`--config` must be an existing TOML file; got {str(path)!r}.")
    try:
        with open(path, "rb") as handle:
            return _from_config_folder(tomllib.load(handle), path.resolve().parent)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not UTF-8 text: {exc}") from exc


def _from_config_folder(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The config with the relative file paths of its ``[[training.user_models]]`` entries
    (``model``, ``weights``, ``data.path``, ``data.test_path``, ``data.labels``) read from
    the config file's folder where the file is there, so that ``--config proj/study.toml``
    finds ``proj/people.csv`` from any working directory. Other values stay as written."""

    def near(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            candidate = folder / value
            if candidate.exists():
                return str(candidate)
        return value

    training = config.get("training")
    entries = training.get("user_models") if isinstance(training, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        for key in ("model", "weights"):
            if key in entry:
                entry[key] = near(entry[key])
        data = entry.get("data")
        if not isinstance(data, dict):
            continue
        for key in ("path", "test_path", "labels"):
            if key in data:
                data[key] = near(data[key])
    return config


def _check_type(where: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list | tuple):
        ok = isinstance(value, list | tuple)
        value = list(value) if ok else value
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"`{where}` must be {type(default).__name__} like {default!r}; got {value!r}."
        )
    return value


def build_config(
    user: dict[str, Any] | None = None,
    *,
    quick: bool = False,
    seed: int | None = None,
    stages: list[str] | None = None,
) -> dict[str, Any]:
    """Merge defaults, quick overrides, the user's TOML table and command-line overrides.

    Raises:
        ConfigError: an unknown key (with the closest suggestion), a value of the wrong type, an
            unknown stage, or bad `seeds`; each stage's own checks raise it too.
    """
    from pellucid.study.stages import STAGES
    from pellucid.study.user_models import check_user_models

    config: dict[str, Any] = {
        "seeds": [0] if quick else [0, 1, 2],
        "stages": list(STAGES),
    }
    for name, stage in STAGES.items():
        section = copy.deepcopy(stage.defaults)
        if quick:
            section.update(copy.deepcopy(stage.quick))
        config[name] = section
    for key, value in (user or {}).items():
        if key in ("seeds", "stages"):
            config[key] = _check_type(key, config[key], value)
        elif key in STAGES:
            if not isinstance(value, dict):
                raise ConfigError(f"`{key}` must be a TOML table ([{key}]); got {value!r}.")
            for sub, sub_value in value.items():
                if sub not in config[key]:
                    raise ConfigError(
                        f"Unknown config key `{key}.{sub}`."
                        + did_you_mean(sub, config[key])
                        + f" Keys of [{key}]: {', '.join(sorted(config[key])) or '(none)'}."
                    )
                config[key][sub] = _check_type(f"{key}.{sub}", config[key][sub], sub_value)
        else:
            raise ConfigError(
                f"Unknown config key `{key}`."
                + did_you_mean(key, ["seeds", "stages", *STAGES])
                + " Top-level keys: seeds, stages, "
                + ", ".join(STAGES)
                + "."
            )
    if stages is not None:
        config["stages"] = stages
    if not config["stages"] or len(set(config["stages"])) != len(config["stages"]):
        raise ConfigError(
            f"`stages` must name each stage to run once, at least one; got {config['stages']!r}."
            f" Stages: {', '.join(STAGES)}."
        )
    for name in config["stages"]:
        if name not in STAGES:
            raise ConfigError(
                f"Unknown stage {name!r}."
                + did_you_mean(name, STAGES)
                + f" Stages: {', '.join(STAGES)}."
            )
    for name in config["stages"]:
        STAGES[name].validate(config[name])
    check_user_models(config)
    if seed is not None:
        config["seeds"] = [seed + i for i in range(len(config["seeds"]))]
    seeds = config["seeds"]
    if not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds
    ):
        raise ConfigError(
            f"`seeds` must be a non-empty list of integers in [0, {MAX_SEED}] (numpy's seed "
            f"range); got {seeds!r}."
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"`seeds` must be distinct (a repeated seed repeats the same run and shrinks the "
            f"confidence intervals falsely); got {seeds!r}."
        )
    config["quick"] = quick
    return config
