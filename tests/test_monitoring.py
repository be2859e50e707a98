"""GradientMonitor: the statistics, the diagnosis on constructed models, files, figure."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from pellucid import GradientMonitor
from pellucid.data import load_dataset
from pellucid.models import MLP, DeepPlainNet
from pellucid.training import TrainState, fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_records_match_manual_norms():
    torch.manual_seed(0)
    net = MLP(6, 3, hidden=(8,))
    x, y = _data(16)
    monitor = GradientMonitor(log_every=1, model=net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    state = TrainState(model=net, optimizer=opt, loss=loss)
    manual = {
        name: torch.cat([p.grad.flatten() for p in layer.parameters()])
        for name, layer in (("net.0", net.net[0]), ("net.2", net.net[2]))
    }
    weights = {
        k: torch.cat([p.detach().flatten() for p in net.net[int(k[-1])].parameters()])
        for k in manual
    }
    monitor.on_before_step(state)
    opt.step()
    monitor.on_after_step(state)
    rows = {r["layer"]: r for r in monitor.records()}
    for name, grad in manual.items():
        assert rows[name]["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-6)
        assert rows[name]["grad_max"] == pytest.approx(float(grad.abs().max()), rel=1e-6)
        update = 0.1 * grad.norm()  # SGD without momentum: ||dW|| = lr * ||g||
        new_w = torch.cat([p.detach().flatten() for p in net.net[int(name[-1])].parameters()])
        assert rows[name]["update_ratio"] == pytest.approx(float(update / new_w.norm()), rel=1e-4)
        assert rows[name]["weight_norm"] == pytest.approx(float(new_w.norm()), rel=1e-6)
        assert not torch.equal(new_w, weights[name])
        assert rows[name]["nonfinite"] == 0
        assert rows[name]["loss"] == pytest.approx(float(loss.detach()))


def test_syncs_only_every_log_every_steps():
    x, y = _data(64)
    monitor = GradientMonitor(log_every=3)
    seen = []

    class Peek(torch.nn.Module):
        pass

    from pellucid.training import Callback

    class Spy(Callback):
        def on_after_step(self, state):
            seen.append(len(monitor.steps))

    fit(
        MLP(6, 3),
        (x, y),
        epochs=1,
        batch_size=8,
        monitor=monitor,
        callbacks=[Spy()],
        progress=False,
    )
    # host copies happen after steps 2, 5 (every 3rd) and at the end
    assert seen == [0, 0, 3, 3, 3, 6, 6, 6]
    assert monitor.steps == list(range(8))


def test_monitor_does_not_change_training():
    x, y = _data(64)
    a, b = MLP(6, 3), MLP(6, 3)
    b.load_state_dict(a.state_dict())
    fit(a, (x, y), epochs=2, batch_size=16, progress=False)
    fit(b, (x, y), epochs=2, batch_size=16, progress=False, monitor=GradientMonitor(log_every=2))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


class _Amplify(torch.nn.Module):
    """Identity forward; multiplies the backward gradient by ``factor ** step``."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor, self.step = factor, 0

    def forward(self, x):
        if self.training and x.requires_grad:
            scale = self.factor**self.step
            self.step += 1
            x.register_hook(lambda g: g * scale)
        return x


def test_finds_the_layer_whose_gradient_explodes_over_time():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        _Amplify(1.6),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 3),
    )
    x, y = _data(128)
    monitor = GradientMonitor(log_every=5)
    fit(
        net,
        (x, y),
        epochs=5,
        batch_size=16,
        optimizer="sgd",
        lr=1e-6,
        monitor=monitor,
        progress=False,
    )
    findings = monitor.diagnose()
    exploding = [f for f in findings if f.kind == "exploding"]
    assert exploding, [str(f) for f in findings]
    assert exploding[0].layers[0] in ("0", "2")  # upstream of the amplifier only
    assert "5" not in exploding[0].layers[:2]
    assert exploding[0].value > 100


def test_names_the_first_layer_to_go_nonfinite():
    class Poison(torch.nn.Module):
        def forward(self, x):
            if self.training and x.requires_grad:
                x.register_hook(lambda g: g * math.nan)
            return x

    net = torch.nn.Sequential(
        torch.nn.Linear(6, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 8),
        Poison(),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 3),
    )
    x, y = _data(32)
    monitor = GradientMonitor(log_every=2)
    fit(
        net,
        (x, y),
        epochs=1,
        batch_size=16,
        monitor=monitor,
        progress=False,
        stop_on_nonfinite=False,
    )
    finding = next(f for f in monitor.diagnose() if f.kind == "nonfinite")
    assert finding.layers[0] == "2" and set(finding.layers) == {"0", "2"}
    assert finding.step == 0
    assert "in 2" in finding.message


def test_diverging_deep_plain_net_is_diagnosed(digits):
    net = DeepPlainNet(64, 10, depth=8, width=32, activation="relu", init_scale=3.0)
    monitor = GradientMonitor(log_every=4)
    fit(
        net,
        digits.train,
        epochs=1,
        batch_size=64,
        optimizer="sgd",
        lr=0.05,
        monitor=monitor,
        progress=False,
    )
    kinds = [f.kind for f in monitor.diagnose()]
    assert kinds[0] == "nonfinite"
    assert "exploding" in kinds or "non-finite" in monitor.diagnose()[0].message


def test_finds_vanishing_layers(digits):
    net = DeepPlainNet(64, 10, depth=10, width=32, activation="tanh", init_scale=0.3)
    monitor = GradientMonitor(log_every=5)
    fit(
        net,
        digits.train,
        epochs=1,
        batch_size=128,
        optimizer="sgd",
        lr=0.01,
        monitor=monitor,
        progress=False,
    )
    vanishing = [f for f in monitor.diagnose() if f.kind == "vanishing"]
    assert vanishing
    assert vanishing[0].layers[0] in ("body.0", "body.2")
    assert "head" not in vanishing[0].layers
    assert not [f for f in monitor.diagnose() if f.kind in ("nonfinite", "exploding")]


def test_finds_dead_units():
    net = MLP(6, 3, hidden=(8, 8))
    with torch.no_grad():
        net.net[2].bias.fill_(-100.0)  # every unit of the second hidden layer is dead
    x, y = _data(64)
    monitor = GradientMonitor(log_every=1)
    fit(net, (x, y), epochs=1, batch_size=16, monitor=monitor, progress=False)
    assert monitor.dead_units()["net.2"] == (8, 8)
    dead = next(f for f in monitor.diagnose() if f.kind == "dead_units")
    assert dead.layers[0] == "net.2" and dead.value == 1.0


def test_healthy_training_has_no_findings():
    x, y = _data(64)
    monitor = GradientMonitor(log_every=2)
    fit(
        MLP(6, 3, activation="tanh"),
        (x, y),
        epochs=3,
        batch_size=16,
        monitor=monitor,
        progress=False,
    )
    assert monitor.diagnose() == []


def test_csv_json_and_figure(tmp_path):
    x, y = _data(32)
    monitor = GradientMonitor(log_every=2)
    fit(MLP(6, 3), (x, y), epochs=1, batch_size=8, monitor=monitor, progress=False)
    rows = list(csv.DictReader(open(monitor.to_csv(tmp_path / "h.csv"), encoding="utf-8")))
    assert len(rows) == 4 * len(monitor.layers)
    assert set(rows[0]) == {
        "step",
        "layer",
        "grad_norm",
        "grad_max",
        "weight_norm",
        "update_ratio",
        "nonfinite",
        "loss",
    }
    data = json.loads((monitor.to_json(tmp_path / "h.json")).read_text())
    assert data["layers"] == monitor.layers and data["steps"] == [0, 1, 2, 3]
    assert len(data["layer_norms"]["net.0"]) == 4

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.plot.gradients import gradient_flow

    ax = monitor.plot()
    assert len(ax.get_lines()) == len(monitor.layers)
    fig, given = plt.subplots()
    assert gradient_flow(data, ax=given, layers=["net.0"]) is given
    with pytest.raises(ValueError, match="`layers` must name monitored layers"):
        gradient_flow(data, layers=["nope"])
    with pytest.raises(TypeError, match="`source` must be a GradientMonitor"):
        gradient_flow([1, 2])
    plt.close("all")


def test_bad_arguments():
    with pytest.raises(ValueError, match="`log_every` must be an integer >= 1"):
        GradientMonitor(log_every=0)
    with pytest.raises(TypeError, match="`model` must be an nn.Module"):
        GradientMonitor(model="net")
    with pytest.raises(ValueError, match="`ratio` must be > 1"):
        GradientMonitor(model=MLP(2, 2)).diagnose(ratio=1.0)


def test_a_vanishing_setup_is_not_also_exploding(digits):
    # sigmoid + small init: the gradient shrinks as it flows back, so the head sits far above
    # every hidden layer. That is one finding (vanishing), not also "exploding: head".
    net = DeepPlainNet(64, 10, depth=12, activation="sigmoid", init_scale=0.2)
    monitor = GradientMonitor(log_every=4)
    fit(
        net,
        digits.train,
        epochs=1,
        batch_size=64,
        optimizer="sgd",
        lr=0.1,
        monitor=monitor,
        progress=False,
    )
    kinds = [f.kind for f in monitor.diagnose()]
    assert "vanishing" in kinds
    assert "exploding" not in kinds, [str(f) for f in monitor.diagnose()]


def test_depth_diagnosis_has_one_direction():
    from pellucid.monitoring.diagnosis import diagnose_history

    # RMS grows 10x per layer toward the output and the head sits far above: vanishing at
    # the input side only (the head is where the gradient enters, it cannot "explode")
    sizes = [100] * 8
    row = torch.tensor([10.0**j for j in range(-6, 1)] + [1e4], dtype=torch.float64) * 10
    norms = row.repeat(8, 1)
    findings = diagnose_history(
        layers=[f"l{j}" for j in range(8)],
        steps=list(range(8)),
        norms=norms,
        losses=torch.ones(8),
        sizes=sizes,
        dead={},
        ratio=100.0,
        growth=100.0,
    )
    assert [f.kind for f in findings] == ["vanishing"]
    assert findings[0].layers[0] == "l0" and "l7" not in findings[0].layers
    # the mirror image (grows as it flows back) is exploding only
    findings = diagnose_history(
        layers=[f"l{j}" for j in range(8)],
        steps=list(range(8)),
        norms=norms.flip(1),
        losses=torch.ones(8),
        sizes=sizes,
        dead={},
        ratio=100.0,
        growth=100.0,
    )
    assert [f.kind for f in findings] == ["exploding"]
    assert findings[0].layers[0] == "l0"
