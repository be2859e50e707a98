from __future__ import annotations

import numpy as np
import pytest
import torch

from pellucid.data import DATASETS, load_arrays, load_dataset


@pytest.mark.parametrize(
    ("name", "shape", "n_classes", "total"),
    [
        ("digits", (1, 8, 8), 10, 1797),
        ("breast_cancer", (30,), 2, 569),
        ("wine", (13,), 3, 178),
        ("iris", (4,), 3, 150),
        ("diabetes", (10,), 1, 442),
    ],
)
def test_shapes_and_split(name, shape, n_classes, total):
    ds = load_dataset(name)
    assert ds.input_shape == shape
    assert ds.n_classes == n_classes
    assert ds.X_train.shape[0] + ds.X_test.shape[0] == total
    assert ds.X_train.dtype == torch.float32
    assert len(ds.feature_names) == int(np.prod(shape))
    assert torch.isfinite(ds.X_train).all()


def test_standardized_on_train_only():
    ds = load_dataset("breast_cancer")
    torch.testing.assert_close(ds.X_train.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    # the test part is transformed with the training statistics, so it is not exactly centred
    assert ds.X_test.mean(0).abs().max() > 1e-3


def test_split_is_stratified_and_deterministic():
    a, b = load_dataset("iris", seed=3), load_dataset("iris", seed=3)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    c = load_dataset("iris", seed=4)
    assert not torch.equal(a.X_train, c.X_train)
    counts = torch.bincount(a.y_test, minlength=3)
    assert counts.max() - counts.min() <= 1


def test_regression_target_is_float():
    ds = load_dataset("diabetes")
    assert ds.task == "regression" and ds.y_train.dtype == torch.float32
    assert ds.class_names == []


def test_unknown_dataset_suggests():
    with pytest.raises(ValueError, match="Did you mean 'digits'"):
        load_dataset("digit")
    assert "digits" in DATASETS


def test_npy_roundtrip_and_no_pickle(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    xt, y, names = load_arrays(tmp_path / "x.npy")
    assert xt.shape == (4, 3) and y is None and names == ["x0", "x1", "x2"]
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="without pickle"):
        load_arrays(tmp_path / "obj.npy")


def test_csv_with_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,target\n1,2,0\n3,4,1\n5,6,1\n")
    x, y, names = load_arrays(path, label="target")
    assert names == ["a", "b"] and x.shape == (3, 2)
    assert y.tolist() == [0, 1, 1] and y.dtype == torch.long
    with pytest.raises(ValueError, match="Did you mean 'target'"):
        load_arrays(path, label="targt")


def test_csv_nan_and_ragged(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("a,b\n1,nan\n3,4\n")
    with pytest.raises(ValueError, match="must be finite"):
        load_arrays(path)
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3 has 1 fields"):
        load_arrays(path)


def test_pt_weights_only(tmp_path):
    torch.save({"X": torch.ones(5, 2), "y": torch.arange(5)}, tmp_path / "d.pt")
    x, y, _ = load_arrays(tmp_path / "d.pt")
    assert x.shape == (5, 2) and y.tolist() == [0, 1, 2, 3, 4]
    torch.save({"X": torch.ones(5, 2), "y": torch.arange(4)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="one entry per row"):
        load_arrays(tmp_path / "bad.pt")


def test_bad_suffix(tmp_path):
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="must end in .npy, .csv or .pt"):
        load_arrays(tmp_path / "x.txt")


def test_load_arrays_refuses_a_pickled_pt_without_suggesting_unsafe_loading(tmp_path):
    """torch's own message suggests `weights_only=False`, which would run the file's code."""
    import fractions

    from pellucid.data import load_arrays

    path = tmp_path / "x.pt"
    torch.save({"X": fractions.Fraction(1, 3)}, path)  # needs unpickling a class
    with pytest.raises(ValueError, match="without unpickling code") as info:
        load_arrays(path)
    assert "weights_only=False" not in str(info.value)
    path.write_bytes(b"garbage, not a zip or a pickle")
    with pytest.raises(ValueError, match="without unpickling code"):
        load_arrays(path)
