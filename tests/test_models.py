from __future__ import annotations

import pytest
import torch

from pellucid.models import MODELS, build_model

CASES = {
    "MLP": ({"in_features": 30, "n_classes": 2}, (4, 30)),
    "SmallCNN": ({"in_channels": 1, "n_classes": 10}, (4, 1, 8, 8)),
    "TinyResNet": ({"in_channels": 1, "n_classes": 10}, (4, 1, 8, 8)),
    "DeepPlainNet": ({"in_features": 64, "n_classes": 10, "depth": 8}, (4, 64)),
    "SequenceRNN": ({"input_size": 8, "n_classes": 10}, (4, 8, 8)),
    "TinyTransformer": ({"input_size": 8, "n_classes": 10}, (4, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward(name):
    kwargs, shape = CASES[name]
    model = build_model(name, seed=0, **kwargs)
    out = model(torch.randn(shape))
    assert out.shape == (shape[0], kwargs["n_classes"])
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seeded_construction(name):
    kwargs, _ = CASES[name]
    a, b = build_model(name, seed=1, **kwargs), build_model(name, seed=1, **kwargs)
    c = build_model(name, seed=2, **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_token_id_models():
    rnn = build_model("SequenceRNN", input_size=8, n_classes=3, vocab_size=20, cell="gru")
    tr = build_model("TinyTransformer", input_size=8, n_classes=3, vocab_size=20)
    ids = torch.randint(0, 20, (2, 7))
    assert rnn(ids).shape == (2, 3) and tr(ids).shape == (2, 3)


def test_deep_plain_init_scale_controls_gradients():
    x = torch.randn(32, 64)
    norms = {}
    for scale in (0.5, 3.0):
        net = build_model("DeepPlainNet", in_features=64, n_classes=10, depth=20, init_scale=scale)
        net(x).square().sum().backward()
        norms[scale] = net.body[0].weight.grad.norm().item()
    assert norms[3.0] > 100 * norms[0.5]


def test_bad_names_and_values():
    with pytest.raises(ValueError, match="Did you mean 'SmallCNN'"):
        build_model("SmallCNNN")
    with pytest.raises(ValueError, match="`activation` must be one of"):
        build_model("MLP", in_features=3, n_classes=2, activation="relux")
    with pytest.raises(ValueError, match="divisible"):
        build_model("TinyTransformer", input_size=4, n_classes=2, d_model=30, n_heads=4)
