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


def test_fingerprint_follows_edits_of_files_folders_and_factories(tmp_path, monkeypatch):
    import sys

    from pellucid.sources.spec import fingerprint

    write_user_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userstudy", raising=False)  # another test's copy
    csv, folder = tmp_path / "people.csv", tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "a.png").write_bytes(b"x")
    before = [fingerprint(str(csv)), fingerprint(str(folder)), fingerprint("userstudy:make_net")]
    assert before == [
        fingerprint(str(csv)),
        fingerprint(str(folder)),
        fingerprint("userstudy:make_net"),
    ]
    csv.write_text(csv.read_text() + "0.1,rome,0.2,yes\n")
    (folder / "cat" / "b.png").write_bytes(b"y")
    module = tmp_path / "userstudy.py"
    module.write_text(module.read_text() + "\n# edited\n")
    after = [fingerprint(str(csv)), fingerprint(str(folder)), fingerprint("userstudy:make_net")]
    assert all(a != b for a, b in zip(before, after, strict=True))


def test_study_recomputes_when_the_users_data_file_changes(tmp_path, monkeypatch):
    """Cached stages and trained weights are keyed on the user's files: an edited CSV is
    never explained with the weights and results of the old one."""
    write_user_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    csv = tmp_path / "people.csv"
    toml = tmp_path / "study.toml"
    toml.write_text(
        'seeds = [0]\nstages = ["training"]\n[training]\nmodels = []\n'
        '[[training.user_models]]\nname = "my-net"\nfactory = "userstudy:make_net"\n'
        "kwargs = { hidden = 8 }\nquick_epochs = 1\n"
        f'data = {{ path = "{csv}", target = "label", categorical = ["city"] }}\n'
    )
    config = build_config(read_config_file(toml), quick=True)
    out = tmp_path / "out"
    record = out / "results" / "training.json"
    run_study(config, out, progress=False)
    first = record.read_text()
    run_study(config, out, progress=False)
    assert record.read_text() == first  # nothing changed: the cached stage is read back
    n_models = len(list((out / "models").glob("user__*.safetensors")))
    lines = csv.read_text().splitlines()
    flipped = [lines[0]] + [
        ",".join(r.split(",")[:-1] + ["no" if r.endswith("yes") else "yes"]) for r in lines[1:]
    ]
    csv.write_text("\n".join(flipped) + "\n")
    run_study(config, out, progress=False)
    assert record.read_text() != first
    assert len(list((out / "models").glob("user__*.safetensors"))) == n_models + 1


def test_toml_paths_are_read_from_the_config_files_folder(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    write_user_project(project)
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    save_file(net.state_dict(), str(project / "w.safetensors"))
    (project / "study.toml").write_text(
        '[[training.user_models]]\nname = "mine"\nfactory = "userstudy:make_net"\n'
        'weights = "w.safetensors"\n'
        'data = { path = "people.csv", target = "label", categorical = ["city"] }\n'
        '[[training.user_models]]\nname = "embedded"\nfactory = "torch.nn:Linear"\n'
        'kwargs = { in_features = 4, out_features = 3 }\ndata = { path = "iris" }\n'
    )
    monkeypatch.chdir(elsewhere)  # not where the files are
    config = build_config(read_config_file(project / "study.toml"), quick=True)
    mine, embedded = config["training"]["user_models"]
    assert mine["data"]["path"] == str(project / "people.csv")
    assert mine["weights"] == str(project / "w.safetensors")
    assert embedded["data"]["path"] == "iris"  # not a file: stays a dataset name
