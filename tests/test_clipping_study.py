"""The study's "clipping" stage: a small run, its results, its report section, its config."""

from __future__ import annotations

import copy
import json

import pytest

from pellucid._io import jsonable
from pellucid.report.html import Figure, Section, Table, render_report
from pellucid.study.config import ConfigError
from pellucid.study.context import StudyContext
from pellucid.study.stages import STAGES
from pellucid.study.stages.clipping import METHODS, ClippingStage


def _cfg(**changes):
    cfg = copy.deepcopy(ClippingStage.defaults)
    cfg.update(ClippingStage.quick)
    cfg.update(epochs=1, depth=6, width=16, init_scale=2.0, lr=0.2)
    cfg.update(changes)
    return cfg


def test_stage_is_registered():
    assert isinstance(STAGES["clipping"], ClippingStage)


@pytest.mark.slow  # ~2 s of training, plus first-time imports (dynamo, sklearn) when alone
def test_small_run_reports_every_method(tmp_path):
    stage = ClippingStage()
    cfg = _cfg()
    stage.validate(cfg)
    ctx = StudyContext(out_dir=tmp_path, seeds=[0], quick=True, progress=False)
    result = jsonable(stage.run(ctx, cfg))
    json.dumps(result, allow_nan=False)  # stored as strict JSON
    assert list(result["methods"]) == list(METHODS)
    for runs in result["methods"].values():
        (run,) = runs
        assert run["steps"] == len(run["step_losses"]) > 0
        assert run["ms_per_step"] > 0
        assert run["clipped_fraction"] is None or 0 <= run["clipped_fraction"] <= 1
    assert result["methods"]["none"][0]["clipped_fraction"] == 0
    assert result["methods"]["global_norm"][0]["clipped_fraction"] > 0
    assert set(result["monitor"]) == {"none", "global_norm"}
    assert result["monitor"]["none"]["layer_norms"]
    section = stage.report(ctx, cfg, result)
    assert isinstance(section, Section)
    kinds = [type(b) for b in section.blocks]
    assert Table in kinds and kinds.count(Figure) == 2
    assert "no clipping" in render_report("t", [section])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"methods": ["global"]}, "clipping.methods"),
        ({"methods": []}, "clipping.methods"),
        ({"epochs": 0}, "clipping.epochs"),
        ({"lr": -1.0}, "clipping.lr"),
        ({"autoclip_percentile": 0}, "clipping.autoclip_percentile"),
    ],
)
def test_bad_config_is_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        ClippingStage().validate(_cfg(**change))
