"""Data a user brings: tables with categorical columns, arrays, image folders, Datasets."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import pellucid
from pellucid.sources import DataSpec, SourceError, load_data

CSV = """age,city,income,label
25,paris,1.5,yes
32,rome,2.0,no
47,oslo,3.5,yes
51,paris,2.5,no
38,rome,1.0,yes
29,oslo,4.0,no
44,paris,3.0,yes
36,rome,2.2,no
"""


def test_csv_with_a_categorical_column_explained_as_one_feature(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    ds = load_data(
        {"path": str(path), "target": "label", "categorical": ["city"], "test_size": 0.25}
    )
    assert ds.feature_groups == ["age", "city", "income"]
    assert ds.feature_names == ["age", "city=oslo", "city=paris", "city=rome", "income"]
    assert ds.feature_mask.tolist() == [0, 1, 1, 1, 2]
    assert ds.class_names == ["no", "yes"]
    assert len(ds.y_train) == 6 and sorted(ds.y_test.tolist()) == [0, 1]  # stratified
    assert ds.X_train[:, 1:4].sum(1).eq(1).all()  # one-hot rows
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 2).double()
    x = ds.X_test.double()
    e = pellucid.kernel_shap(net, x, target=1, feature_mask=ds.feature_mask)
    # 3 players, all coalitions enumerated: a linear model's exact Shapley value of a group
    # is the sum of its columns' w * (x - 0); every column of the city group carries it.
    w = net.weight[1].detach()
    group_value = (w[1:4] * x[:, 1:4]).sum(1, keepdim=True)
    torch.testing.assert_close(e.attributions[:, 1:4], group_value.expand(-1, 3))
    torch.testing.assert_close(e.attributions[:, 0], w[0] * x[:, 0])
    again = load_data({"path": str(path), "target": "label", "categorical": ["city"]})
    torch.testing.assert_close(again.X_test, ds.X_test)  # deterministic split


def test_table_errors_name_the_column(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    with pytest.raises(SourceError, match="column 'city' is not numeric.*data.categorical"):
        load_data({"path": str(path), "target": "label"})
    with pytest.raises(SourceError, match="`data.target` must be a column.*'lable'.*'label'"):
        load_data({"path": str(path), "target": "lable", "categorical": ["city"]})
    holes = tmp_path / "holes.csv"
    holes.write_text(CSV.replace("47,oslo,3.5", "47,oslo,"))
    with pytest.raises(SourceError, match="column 'income' has 1 missing value.*data row 3"):
        load_data({"path": str(holes), "target": "label", "categorical": ["city"]})
    with pytest.raises(SourceError, match="unknown key 'targt'.*'target'"):
        load_data({"path": str(path), "targt": "label"})
    with pytest.raises(SourceError, match="does not exist"):
        load_data({"path": str(tmp_path / "nope.csv"), "target": "label"})


def test_parquet_and_user_split(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.read_csv(__import__("io").StringIO(CSV))
    frame.iloc[:6].to_parquet(tmp_path / "train.parquet")
    frame.iloc[6:].to_parquet(tmp_path / "test.parquet")
    ds = load_data(
        DataSpec(
            path=str(tmp_path / "train.parquet"),
            test_path=str(tmp_path / "test.parquet"),
            target="income",
            categorical=("city", "label"),
            standardize=True,
        )
    )
    assert ds.task == "regression" and ds.y_test.tolist() == pytest.approx([3.0, 2.2])
    assert ds.X_train[:, 0].mean().abs() < 1e-6  # standardized on the training split
    assert set(ds.X_train[:, 1:].unique().tolist()) == {0.0, 1.0}  # one-hot columns untouched


def test_arrays_npz_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
    np.savez(tmp_path / "d.npz", X=x, y=y)
    ds = load_data(str(tmp_path / "d.npz"))
    assert ds.input_shape == (3,) and len(ds.y_train) == 30 and ds.class_names == ["0", "1"]
    np.savez(tmp_path / "bad.npz", features=x)
    with pytest.raises(SourceError, match="expected arrays named 'X' and 'y'; found"):
        load_data(str(tmp_path / "bad.npz"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y[:10])
    with pytest.raises(SourceError, match="one label per row expected; found 40 rows and 10"):
        load_data({"path": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy")})
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match="holds Python objects"):
        load_data({"path": str(tmp_path / "obj.npy"), "labels": str(tmp_path / "y.npy")})


def test_image_folder_written_by_the_test(tmp_path):
    from PIL import Image

    for label, value in (("cat", 40), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(4):
            pixels = np.full((10, 12, 3), value + i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    ds = load_data(
        {"path": str(tmp_path), "size": 8, "mean": [0.5], "std": [0.25], "test_size": 0.5}
    )
    assert ds.class_names == ["cat", "dog"] and ds.input_shape == (3, 8, 8)
    assert len(ds.y_train) == 4 and ds.y_test.tolist().count(0) == 2  # stratified halves
    cats = ds.X_train[ds.y_train == 0]
    expected = (torch.tensor([40.0, 41, 42, 43]) / 255 - 0.5) / 0.25
    assert any(
        torch.allclose(cats[k], torch.full((3, 8, 8), v)) for k in range(2) for v in expected
    )
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SourceError, match=r"broken.png.*expected a PNG/JPEG image"):
        load_data({"path": str(tmp_path), "size": 8})


def test_dataset_import_path(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import Dataset

            class Squares(Dataset):
                def __init__(self, n=20, offset=0):
                    self.n, self.offset = n, offset
                def __len__(self):
                    return self.n
                def __getitem__(self, i):
                    v = float(i + self.offset)
                    return torch.tensor([v, v * v]), i % 2
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_data(
        {"path": "userdata:Squares", "kwargs": {"n": 12}, "test_kwargs": {"n": 4, "offset": 100}}
    )
    assert len(ds.y_train) == 12 and ds.X_test[:, 0].tolist() == [100, 101, 102, 103]
    with pytest.raises(SourceError, match="has no attribute 'Nope'"):
        load_data({"path": "userdata:Nope"})
