"""The explorer's data export, static page and server (no browser: see test_explorer_browser)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re

import numpy as np
import pytest
import torch

from pellucid import Explanation
from pellucid.explorer import ExplorerServer, ExplorerWarning, load_folder, write_static_page
from pellucid.explorer._page import embed_json
from pellucid.explorer._server import safe_relative_path
from pellucid.study.examples import ExampleRecorder
from pellucid.study.examples import file_sha256 as sha256

XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>']


def _decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def _explanations(folder, *, names=None):
    """Two variants (sub-folders) x two methods of the same 5 tabular rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g)
    names = names or ["age", "dose", "weight", "height"]
    for variant in ("dense", "pruned"):
        for method in ("saliency", "occlusion"):
            attr = torch.randn(5, 4, generator=g)
            extras = {"completeness_gap": torch.randn(5, generator=g), "feature_names": names}
            e = Explanation(attr, x, method, target=torch.tensor([0, 1, 1, 0, 1]), extras=extras)
            e.save(folder / variant / f"{method}.safetensors")
    return x


def test_explanation_folder_groups_variants_methods_and_metrics(tmp_path):
    x = _explanations(tmp_path)
    (tmp_path / "notes.safetensors").write_bytes(b"not safetensors")  # skipped quietly
    (sets,) = load_folder(tmp_path)
    assert sets.kind == "tabular" and sets.variants == ["dense", "pruned"]
    assert sets.methods == ["occlusion", "saliency"]  # files in name order
    assert sets.feature_names == ["age", "dose", "weight", "height"]
    torch.testing.assert_close(sets.inputs, x)
    saved = Explanation.load(tmp_path / "pruned" / "occlusion.safetensors")
    torch.testing.assert_close(sets.attributions[("pruned", "occlusion")], saved.attributions)
    metrics = sets.metrics[("pruned", "occlusion")]
    torch.testing.assert_close(metrics["completeness_gap"], saved.extras["completeness_gap"])
    from pellucid.metrics import spearman

    dense = Explanation.load(tmp_path / "dense" / "occlusion.safetensors").attributions
    torch.testing.assert_close(metrics["agreement"], spearman(dense, saved.attributions).float())
    assert "agreement" not in sets.metrics[("dense", "occlusion")]


def test_pages_carry_the_saved_float32_values_and_split_lazily(tmp_path):
    _explanations(tmp_path)
    (sets,) = load_folder(tmp_path)
    page = sets.page(1, 2)  # examples 2 and 3
    assert (page["start"], page["stop"]) == (2, 4)
    attr = _decode(page["attributions"]["dense"]["saliency"]).reshape(2, 4)
    np.testing.assert_array_equal(attr, sets.attributions[("dense", "saliency")][2:4].numpy())
    manifest = sets.manifest(0, 2)
    assert manifest["pages"] == 3 and manifest["n"] == 5
    assert manifest["predictions"]["dense"] == [0, 1, 1, 0, 1]
    assert manifest["metric_names"][:2] == ["completeness_gap", "agreement"]


def _study_folder(tmp_path, names=None):
    """A study folder with one model's per-example file, as the interpretability stage
    writes it (two variants, one method, curves)."""
    from pellucid.metrics import deletion_curve

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 0, 1, 1, 0])
    net = torch.nn.Linear(3, 2)
    rec = ExampleRecorder(
        "toy/MLP",
        0,
        x,
        y,
        feature_names=names or ["a", "b", "c"],
        class_names=["no", "yes"],
        mean=torch.zeros(3),
        std=torch.ones(3),
    )
    for variant in ("dense", "unstructured:0.5"):
        rec.variant(variant, net(x).argmax(1))
        attr = torch.randn(6, 3, generator=g)
        curve = deletion_curve(net, x, attr, target=y)
        rec.method(variant, "saliency", attr, {"deletion_auc": curve.auc}, {"deletion": curve})
    record = rec.save(tmp_path / "results" / "examples")
    result = {"result": {"models": {"toy/MLP": {"examples": record}}}}
    (tmp_path / "results" / "interpretability.json").write_text(json.dumps(result))
    return rec


def test_study_examples_round_trip_and_stale_files_are_refused(tmp_path):
    rec = _study_folder(tmp_path)
    (sets,) = load_folder(tmp_path)
    assert sets.title == "toy/MLP" and sets.variants == ["dense", "unstructured:0.5"]
    key = ("unstructured:0.5", "saliency")
    torch.testing.assert_close(
        sets.attributions[key], rec.tensors["unstructured:0.5/saliency/attributions"]
    )
    assert set(sets.curves[key]) == {"deletion", "fractions"}
    assert sets.class_names == ["no", "yes"] and sets.labels.tolist() == [0, 1, 0, 1, 1, 0]
    path = tmp_path / "results" / "examples" / "toy__MLP.safetensors"
    assert (
        sha256(path)
        == json.loads((tmp_path / "results" / "interpretability.json").read_text())["result"][
            "models"
        ]["toy/MLP"]["examples"]["sha256"]
    )
    path.write_bytes(path.read_bytes()[:-3] + b"   ")  # changed after the results were written
    with pytest.warns(ExplorerWarning, match="checksum"):
        assert load_folder(tmp_path) == []


def test_embedded_json_cannot_close_its_script_block():
    text = embed_json({"name": "</script><script>alert(1)</script>&"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["name"] == "</script><script>alert(1)</script>&"


def test_static_page_is_self_contained_and_escapes_names(tmp_path):
    _study_folder(tmp_path, names=[XSS[0], XSS[1], "c"])
    page = write_static_page(tmp_path).read_text()
    assert page.count("<script") == 3  # manifest, one page of examples, the script itself
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # nothing from a network
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "Content-Security-Policy" in page


def test_safe_relative_path_refuses_absolute_and_climbing_paths():
    assert safe_relative_path("report/index.html") == "report/index.html"
    for bad in ("/etc/passwd", "%2Fetc%2Fpasswd", "../x", "a/../../x", "a/%2e%2e/x", "a\\b", ""):
        assert safe_relative_path(bad) is None, bad
    assert safe_relative_path("C:/x") is None and safe_relative_path("a/\x00b") is None


@pytest.fixture
def server(tmp_path):
    _explanations(tmp_path / "served")
    (tmp_path / "served" / "report").mkdir()
    (tmp_path / "served" / "report" / "index.html").write_text("<p>report</p>")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", tmp_path / "served" / "link.txt")
    srv = ExplorerServer(tmp_path / "served", port=0)
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(srv, path, method="GET", host=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    conn.putrequest(method, path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_server_is_loopback_and_serves_page_data_and_files(server):
    assert server.server_address[0] == "127.0.0.1"
    status, body = _get(server, "/")
    assert status == 200 and b'data-mode="server"' in body
    status, body = _get(server, "/api/manifest")
    assert status == 200 and json.loads(body)["datasets"][0]["variants"] == ["dense", "pruned"]
    status, body = _get(server, "/api/page?dataset=d0&page=0")
    assert status == 200 and json.loads(body)["stop"] == 5
    assert _get(server, "/api/page?dataset=d0&page=9")[0] == 404
    assert _get(server, "/files/report/index.html") == (200, b"<p>report</p>")


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/files/../secret.txt",
        "/files/..%2Fsecret.txt",
        "/files/%2e%2e/secret.txt",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/link.txt",  # a symbolic link out of the folder
        "/files/report\\..\\..\\secret.txt",
    ],
)
def test_server_refuses_traversal_absolute_paths_and_links_out(server, path):
    status, body = _get(server, path)
    assert status == 403 and b"secret" not in body


def test_server_is_read_only_and_refuses_other_hosts(server):
    assert _get(server, "/", method="POST")[0] == 501
    assert _get(server, "/files/report/index.html", method="PUT")[0] == 501
    assert _get(server, "/", host="evil.example:80")[0] == 403


def test_serve_command_prints_its_address_and_serves(tmp_path):
    import subprocess
    import sys

    _explanations(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pellucid.cli", "serve", str(tmp_path), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/manifest")
        assert json.loads(conn.getresponse().read())["datasets"][0]["n"] == 5
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "missing-dir"], "`DIR` must be an existing directory"),
        (["serve", ".", "--port", "70000"], "`--port` must be an integer in [0, 65535]"),
    ],
)
def test_serve_command_bad_input_is_one_line(args, message, capsys):
    from pellucid.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
