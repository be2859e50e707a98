"""Study config values outside their range are refused before anything runs."""

from __future__ import annotations

import pytest

from pellucid.cli import main
from pellucid.study.config import ConfigError, build_config


@pytest.mark.parametrize(
    ("user", "named"),
    [
        ({"clipping": {"depth": 100_000_000}}, "clipping.depth"),
        ({"clipping": {"lr": float("inf")}}, "clipping.lr"),
        ({"clipping": {"lr": float("nan")}}, "clipping.lr"),
        ({"interpretability": {"finetune_epochs": -1}}, "interpretability.finetune_epochs"),
        ({"interpretability": {"surrogate_depth": 0}}, "interpretability.surrogate_depth"),
        ({"interpretability": {"radius": -1.0}}, "interpretability.radius"),
        ({"interpretability": {"radius": float("nan")}}, "interpretability.radius"),
        ({"interpretability": {"radius": float("inf")}}, "interpretability.radius"),
        (
            {"interpretability": {"faithfulness_samples": 0}},
            "interpretability.faithfulness_samples",
        ),
        ({"interpretability": {"sensitivity_samples": 0}}, "interpretability.sensitivity_samples"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"seeds": [2**40]}, "seeds"),
        ({"findings": {"source": "anything"}}, "findings.source"),
        ({"stages": []}, "stages"),
        ({"stages": ["training", "training"]}, "stages"),
    ],
)
def test_out_of_range_values_are_refused(user, named):
    with pytest.raises(ConfigError, match=f"`{named}` must"):
        build_config(user, quick=True)


def test_defaults_pass():
    assert build_config(None)["stages"]
    assert build_config(None, quick=True)["seeds"] == [0]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--stages", ""], "`--stages` must name at least one stage"),
        (["--stages", ",,,"], "`--stages` must name at least one stage"),
        (["--seed", "99999999999999999999"], "`--seed` must be an integer >= 0 and <="),
    ],
)
def test_cli_refuses_before_running(tmp_path, capsys, argv, named):
    out = tmp_path / "study"
    assert main(["study", "--quick", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
