"""Token-id inputs: perturbation methods replace removed tokens by `mask_token`; nothing else
ever sees integer inputs (interpolating ids is meaningless), and tokens are drawn by attribution."""

from __future__ import annotations

import inspect

import matplotlib
import pytest
import torch
from torch import nn

import pellucid
from pellucid import feature_ablation, kernel_shap, lime, occlusion, token_groups
from pellucid.plot import token_attribution

matplotlib.use("Agg")

VOCAB, DIM, LENGTH = 20, 4, 6


class BagOfEmbeddings(nn.Module):
    """``logits = head(mean_t emb[ids_t])``: additive over positions, so every perturbation
    method has a closed form: position t contributes ``u . emb[id] / L``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, DIM)
        self.head = nn.Linear(DIM, 2)
        self.calls = 0
        self.dtypes: set[torch.dtype] = set()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.dtypes.add(ids.dtype)
        return self.head(self.emb(ids).mean(1))


def _model() -> BagOfEmbeddings:
    return BagOfEmbeddings().double().eval()


def _ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, VOCAB, (3, LENGTH), generator=g)


def _contribution(model: BagOfEmbeddings, ids: torch.Tensor, target: int) -> torch.Tensor:
    """Each position's term of the target logit, ``u_target . emb[id] / L`` (float64)."""
    with torch.no_grad():
        return model.emb(ids) @ model.head.weight[target] / ids.shape[1]


METHODS = {
    "occlusion": lambda m, x, **kw: occlusion(m, x, **kw),
    "feature_ablation": lambda m, x, **kw: feature_ablation(m, x, **kw),
    "kernel_shap": lambda m, x, **kw: kernel_shap(m, x, generator=torch.Generator().manual_seed(0), **kw),
    "lime": lambda m, x, **kw: lime(m, x, alpha=0.0, n_samples=200,
                                    generator=torch.Generator().manual_seed(0), **kw),
}  # fmt: skip


@pytest.mark.parametrize("name", list(METHODS))
def test_token_ids_are_explained_in_closed_form(name):
    model, ids, mask = _model(), _ids(), 0
    e = METHODS[name](model, ids, target=1, mask_token=mask)
    expected = _contribution(model, ids, 1) - _contribution(model, torch.zeros_like(ids), 1)
    torch.testing.assert_close(e.attributions, expected, rtol=1e-9, atol=1e-12)
    assert e.attributions.dtype == torch.float64  # the model's output dtype
    assert torch.equal(e.inputs, ids) and e.inputs.dtype == torch.long
    assert torch.equal(e.baseline, torch.zeros_like(ids)) and e.params["mask_token"] == 0
    assert model.dtypes == {torch.long}  # every row reached the model as integer ids


@pytest.mark.parametrize("name", ["feature_ablation", "kernel_shap", "lime"])
def test_word_pieces_grouped_into_words_and_special_tokens_kept(name):
    model, ids = _model(), _ids()
    # per example: [CLS] w0 w0 w1 w2 [SEP], and [CLS] w0 w1 w1 w1 [SEP], and so on
    words = [[None, 0, 0, 1, 2, None], [None, 0, 1, 1, 1, None], [None, 0, 1, 2, 3, None]]
    groups = token_groups(words)
    assert groups.tolist()[1] == [0, 1, 2, 2, 2, 3]
    cls_sep = torch.tensor([5, 0, 0, 0, 0, 7])  # the special tokens stay as themselves
    ids[:, 0], ids[:, -1] = 5, 7
    e = METHODS[name](model, ids, target=0, feature_mask=groups, mask_token=cls_sep)
    delta = _contribution(model, ids, 0) - _contribution(model, cls_sep.expand_as(ids), 0)
    for row in range(ids.shape[0]):
        for group in groups[row].unique():
            members = groups[row] == group
            torch.testing.assert_close(
                e.attributions[row, members], delta[row, members].sum().expand(int(members.sum())),
                rtol=1e-9, atol=1e-12,
            )  # fmt: skip
    # [CLS]/[SEP] are replaced by themselves: no effect (exactly 0 up to the fit's rounding)
    assert float(e.attributions[:, [0, -1]].abs().max()) <= 1e-12


def test_occlusion_window_counts_tokens():
    model, ids = _model(), _ids()
    e = occlusion(model, ids, target=1, mask_token=3, window=2)
    delta = _contribution(model, ids, 1) - _contribution(model, torch.full_like(ids, 3), 1)
    windows = delta[:, :-1] + delta[:, 1:]  # drop of each window of two tokens
    expected = torch.zeros_like(delta)
    expected[:, :-1] += windows
    expected[:, 1:] += windows
    expected[:, 1:-1] /= 2  # inner tokens are covered by two windows
    torch.testing.assert_close(e.attributions, expected, rtol=1e-9, atol=1e-12)


def test_kernel_shap_takes_a_background_of_token_ids():
    model, ids = _model(), _ids()
    background = torch.tensor([[0] * LENGTH, [4] * LENGTH])
    e = kernel_shap(model, ids, target=1, background=background)
    reference = (
        _contribution(model, background[:1], 1) + _contribution(model, background[1:], 1)
    ) / 2
    expected = _contribution(model, ids, 1) - reference
    torch.testing.assert_close(e.attributions, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "inputs", "error", "match"),
    [
        ({}, None, TypeError, r"`mask_token` must be given for token-id `inputs` \(dtype torch.int64\)"),
        ({"mask_token": 0}, "float", ValueError, r"`mask_token` replaces removed tokens"),
        ({"mask_token": 0, "baseline": 0.0}, None, ValueError, r"`baseline`.*`mask_token=`"),
        ({"mask_token": -1}, None, ValueError, r"`mask_token` must hold token ids >= 0; got -1"),
        ({"mask_token": VOCAB}, None, ValueError, r"`mask_token`.*below 20.*'emb'; got 20"),
        ({"mask_token": 1.5}, None, TypeError, r"`mask_token` must be an integer token id"),
        ({"mask_token": True}, None, TypeError, r"`mask_token` must be an integer token id"),
        ({"mask_token": torch.zeros(LENGTH)}, None, TypeError, r"`mask_token` must hold integer"),
        ({"mask_token": torch.zeros(4, dtype=torch.long)}, None, ValueError, r"`mask_token` of shape"),
        ({"mask_token": 0}, "negative", ValueError, r"`inputs` must hold token ids >= 0.*\(1, 2\)"),
        ({"mask_token": 0}, "too large", ValueError, r"`inputs`.*below 20.*got 25 at index \(0, 3\)"),
        ({"mask_token": 0}, "bool", TypeError, r"`inputs` must be floating-point features or integer"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("name", list(METHODS))
def test_bad_token_calls_are_refused_before_the_model_runs(name, kwargs, inputs, error, match):
    model, ids = _model(), _ids()
    if inputs == "float":
        ids = ids.double()
    elif inputs == "negative":
        ids[1, 2] = -4
    elif inputs == "too large":
        ids[0, 3] = 25
    elif inputs == "bool":
        ids = ids > 5
    with pytest.raises(error, match=match):
        METHODS[name](model, ids, target=0, **kwargs)
    assert model.calls == 0


def test_lime_refuses_train_data_with_token_ids():
    with pytest.raises(ValueError, match="`mask_token` belong to the interpretable"):
        lime(_model(), _ids(), train_data=torch.randn(8, LENGTH), mask_token=0)


def test_integer_inputs_never_reach_interpolation():
    """Contract: a method without `mask_token` refuses integer inputs before running the
    model, pointing to `layer=`; one with it names `mask_token`."""
    ids = _ids()
    for name in pellucid.list_methods():
        info = pellucid.get_method(name)
        if info.needs_layer or info.kind == "attention":
            continue  # they explain at a layer or read attention maps: token ids are fine
        model = _model()
        takes_mask = "mask_token" in inspect.signature(info.fn).parameters
        match = "`mask_token` must be given" if takes_mask else r"`layer=` \(the embedding\)"
        with pytest.raises(TypeError, match=match):
            info.fn(model, ids, target=0, **info.contract_kwargs)
        assert model.calls == 0, name
    takes = {
        n for n in pellucid.list_methods()
        if "mask_token" in inspect.signature(pellucid.get_method(n).fn).parameters
    }  # fmt: skip
    assert takes == {"occlusion", "feature_ablation", "lime", "kernel_shap"}
    # the way the message points to: gradients at the embedding's output
    e = pellucid.integrated_gradients(_model(), ids, target=0, layer="emb", n_steps=8)
    assert e.attributions.shape == (*ids.shape, DIM)


def test_token_groups_builds_words_and_refuses_bad_input():
    assert token_groups([0, 0, 1, None, None, 2]).tolist() == [0, 0, 1, 2, 3, 4]
    assert token_groups(torch.tensor([3, 3, 3])).tolist() == [0, 0, 0]
    # a pair of sentences: word 0 again after the separator is a new word
    assert token_groups([None, 0, 1, None, 0, 0, None]).tolist() == [0, 1, 2, 3, 4, 4, 5]
    with pytest.raises(ValueError, match="`word_ids` rows must all have one length"):
        token_groups([[0, 1], [0]])
    with pytest.raises(TypeError, match=r"`word_ids` must hold integer.*'a' at \[1\]"):
        token_groups([0, "a"])
    with pytest.raises(ValueError, match="`word_ids` must be a non-empty list"):
        token_groups([])


def test_token_plot_colours_tokens_by_sign_and_size():
    model, ids = _model(), _ids()
    e = occlusion(model, ids, target=1, mask_token=0)
    tokens = [f"t{i}" for i in ids[0].tolist()]
    ax = token_attribution(e, tokens)
    assert [t.get_text() for t in ax.texts] == tokens
    values = e.attributions[0]
    for text, value in zip(ax.texts, values.tolist(), strict=True):
        red, _, blue, _ = text.get_bbox_patch().get_facecolor()
        assert (red > blue) == (value > 0)  # RdBu_r: red up, blue down
    # the scale is symmetric: colour = cmap(1/2 + value / (2 max|value|)), the largest at an end
    cmap, scale = matplotlib.colormaps["RdBu_r"], float(values.abs().max())
    for text, value in zip(ax.texts, values.tolist(), strict=True):
        expected = cmap(0.5 + 0.5 * value / scale)
        assert text.get_bbox_patch().get_facecolor() == pytest.approx(expected, abs=1 / 255)
    # embedding-layer attributions (N, L, D) are summed per token; long texts wrap
    layer = pellucid.integrated_gradients(model, ids, target=1, layer="emb", n_steps=8)
    ax = token_attribution(layer.attributions.repeat(1, 30, 1), tokens * 30, line_chars=40)
    assert len({t.get_position()[1] for t in ax.texts}) > 1
    with pytest.raises(ValueError, match="`tokens` must hold one string per position, 6; got 2"):
        token_attribution(e, ["a", "b"])
    with pytest.raises(ValueError, match="`example` must index"):
        token_attribution(e, tokens, example=7)
    with pytest.raises(TypeError, match="`source` must be an Explanation"):
        token_attribution([1.0], ["a"])


class _MaxPoolText(nn.Module):
    """A non-additive token model: embedding, tanh, max over positions, linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(ids)).amax(1))


@pytest.mark.peer
def test_token_ablation_and_occlusion_equal_captum_on_a_non_additive_model():
    from captum.attr import FeatureAblation, Occlusion

    model, ids = _MaxPoolText().double().eval(), _ids()
    groups = token_groups([[None, 0, 0, 1, 2, None]] * 3)
    ours = feature_ablation(model, ids, target=2, feature_mask=groups[0], mask_token=0)
    theirs = FeatureAblation(model).attribute(
        ids, target=2, feature_mask=groups[0].unsqueeze(0), baselines=0
    )
    torch.testing.assert_close(ours.attributions, theirs.to(torch.float64), rtol=1e-10, atol=1e-12)
    ours = occlusion(model, ids, target=1, mask_token=4, window=2)
    theirs = Occlusion(model).attribute(ids, sliding_window_shapes=(2,), baselines=4, target=1)
    torch.testing.assert_close(ours.attributions, theirs.to(torch.float64), rtol=1e-6, atol=1e-7)
