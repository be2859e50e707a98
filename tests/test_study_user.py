"""The study on a user's own model and data, end to end from a TOML file (quick settings)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pellucid.study.config import ConfigError, build_config, read_config_file
from pellucid.study.runner import run_study

FACTORY = """
import torch

def make_net(hidden=16):
    return torch.nn.Sequential(
        torch.nn.Linear(5, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)
    )
"""


def write_user_project(folder):
    """A factory module and a CSV (two numeric columns, one categorical) in ``folder``."""
    (folder / "userstudy.py").write_text(textwrap.dedent(FACTORY))
    rng = np.random.default_rng(0)
    n = 120
    a, b = rng.normal(size=n), rng.normal(size=n)
    city = rng.choice(["oslo", "paris", "rome"], size=n)
    label = np.where(a + (city == "rome") > 0.3, "yes", "no")
    lines = ["a,city,b,label"] + [f"{a[i]:.4f},{city[i]},{b[i]:.4f},{label[i]}" for i in range(n)]
    (folder / "people.csv").write_text("\n".join(lines) + "\n")


TOML = """
seeds = [0]
stages = ["training", "clipping", "explanations", "model_agnostic", "pruning",
          "interpretability", "findings"]

[training]
models = []

[[training.user_models]]
name = "my-net"
factory = "userstudy:make_net"
kwargs = {{ hidden = 16 }}
epochs = 8
quick_epochs = 8
lr = 0.03
data = {{ path = "{csv}", target = "label", categorical = ["city"], standardize = true }}

[[training.user_models]]
name = "my-pretrained"
factory = "userstudy:make_net"
weights = "{weights}"
data = {{ path = "{csv}", target = "label", categorical = ["city"], standardize = true }}

[clipping]
methods = ["none", "weight_clip"]
user_models = ["my-net"]
epochs = 1

[explanations]
models = []
methods = ["integrated_gradients", "deeplift", "occlusion"]

[model_agnostic]
tabular_models = []
image_models = []

[pruning]
models = []
unstructured = [0.5]
structured = [0.5]

[interpretability]
models = []
clip_models = []
unstructured = [0.5]
structured = [0.5]
"""


@pytest.mark.slow
def test_study_on_user_models_from_toml(tmp_path, monkeypatch):
    write_user_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(3)
    pretrained = torch.nn.Sequential(
        torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )
    save_file(pretrained.state_dict(), str(tmp_path / "w.safetensors"))
    config_path = tmp_path / "study.toml"
    config_path.write_text(
        TOML.format(csv=tmp_path / "people.csv", weights=tmp_path / "w.safetensors")
    )
    config = build_config(read_config_file(config_path), quick=True)
    report = run_study(config, tmp_path / "out", progress=False)
    results = tmp_path / "out" / "results"
    training = json.loads((results / "training.json").read_text())["result"]
    assert set(training) == {"my-net", "my-pretrained"}
    assert training["my-net"]["runs"][0]["test"]["accuracy"] > 0.7  # a separable rule
    assert training["my-pretrained"]["user"]["pretrained"]
    clipping = json.loads((results / "clipping.json").read_text())["result"]
    assert set(clipping["user_models"]["my-net"]) == {"none", "weight_clip"}
    explanations = json.loads((results / "explanations.json").read_text())["result"]
    assert "deeplift" in explanations["my-net"]["methods"]
    agnostic = json.loads((results / "model_agnostic.json").read_text())["result"]
    run = agnostic["my-net"]["runs"][0]
    assert run["group_names"] == ["a", "city", "b"]  # the one-hot city is one feature
    pruning = json.loads((results / "pruning.json").read_text())["result"]
    kinds = {r["kind"] for r in pruning["models"]["my-net"]["runs"]}
    assert kinds == {"dense", "unstructured", "structured"}
    interp = json.loads((results / "interpretability.json").read_text())["result"]
    assert "my-net" in interp["models"]
    html = report.read_text()
    assert "my-net" in html and "userstudy:make_net" in html and "people.csv" in html


def test_user_model_config_errors(tmp_path):
    base = {"name": "m", "factory": "x:y", "data": {"path": "iris"}}
    with pytest.raises(ConfigError, match=r"unknown key 'wieghts'.*'weights'"):
        build_config({"training": {"user_models": [{**base, "wieghts": "w.pt"}]}}, quick=True)
    with pytest.raises(ConfigError, match="exactly one of `factory`"):
        build_config({"training": {"user_models": [{"name": "m", "data": {"path": "iris"}}]}})
    with pytest.raises(ConfigError, match="`clipping.user_models` must name.*'n'"):
        build_config(
            {"training": {"user_models": [base]}, "clipping": {"user_models": ["n"]}}, quick=True
        )
    with pytest.raises(ConfigError, match="expected a .csv.*does not exist"):
        build_config(
            {"training": {"user_models": [{**base, "data": {"path": str(tmp_path / "a.txt")}}]}}
        )
