"""The explorer in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

One quick study (two models, two methods, a dense and a pruned variant) feeds both the
served page and the static ``file://`` page; one browser serves the whole module. Skipped
only when no Chromium is installed and not in CI (``CI=true`` makes a missing browser fail).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("PELLUCID_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>']


def _need_browser():
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    missing = []
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        missing.append(f"Chromium ({CHROMIUM}; apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    if missing and in_ci:
        pytest.fail("browser tests need " + " and ".join(missing) + " in CI")
    if missing:
        pytest.skip("browser tests skipped: no " + " and no ".join(missing) + " here")


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def study(tmp_path_factory, browser):
    from pellucid.explorer import write_static_page
    from pellucid.study.config import build_config
    from pellucid.study.runner import run_study

    out = tmp_path_factory.mktemp("explorer-study")
    interp = {
        "models": ["digits/SmallCNN", "breast_cancer/MLP"],
        "clip_models": [],
        "methods": ["saliency", "integrated_gradients"],
        "unstructured": [0.5],
        "structured": [],
        "n_explain": 6,
        "faithfulness_samples": 8,
        "sensitivity_samples": 1,
        "randomization_examples": 2,
    }
    config = build_config({"interpretability": interp}, quick=True, stages=["interpretability"])
    run_study(config, out, resume=False, progress=False)
    write_static_page(out)
    return out


@pytest.fixture(scope="module")
def server(study):
    from pellucid.explorer import ExplorerServer

    srv = ExplorerServer(study, port=0)
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _saved(study, model, variant, method):
    from safetensors.torch import load_file

    tensors = load_file(str(study / "results" / "examples" / f"{model}.safetensors"))
    return tensors[f"{variant}/{method}/attributions"]


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.dialogs = []
    page.requests = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)
    return page


def _settle(page):
    page.evaluate("window.pellucidExplorer.ready()")


def _hover_pixel(page, selector, row, col, size=8):
    box = page.locator(selector).bounding_box()
    page.mouse.move(
        box["x"] + (col + 0.5) * box["width"] / size, box["y"] + (row + 0.5) * box["height"] / size
    )
    return float(page.get_attribute("#px-tip [data-attr]", "data-attr"))


def _walk_image_views(page, study):
    """Click an example, switch method and variant, check the maps change and the hover
    values equal the saved attributions."""
    page.click(".card[data-index='2']")
    _settle(page)
    assert page.get_attribute("#px-view", "data-view") == "example"
    sal = "canvas.heat[data-method='saliency']"
    before = page.eval_on_selector(sal, "c => c.toDataURL()")
    saved = _saved(study, "digits__SmallCNN", "dense", "saliency")[2, 0]
    for row, col in ((3, 4), (6, 1)):
        shown = _hover_pixel(page, sal, row, col)
        assert shown == pytest.approx(float(saved[row, col]), rel=0, abs=0)
    page.select_option("#px-variant", "unstructured:0.5")
    _settle(page)
    after = page.eval_on_selector(sal, "c => c.toDataURL()")
    assert after != before  # the pruned model's map differs
    pruned = _saved(study, "digits__SmallCNN", "unstructured:0.5", "saliency")[2, 0]
    assert _hover_pixel(page, sal, 3, 4) == float(pruned[3, 4])
    page.click(".panel[data-method='integrated_gradients']")
    _settle(page)
    assert "integrated_gradients on unstructured:0.5" in page.inner_text("#px-curve h3")
    assert page.locator("#px-curve polyline[data-curve='deletion']").count() == 1
    ig = "canvas.heat[data-method='integrated_gradients']"
    ig_saved = _saved(study, "digits__SmallCNN", "unstructured:0.5", "integrated_gradients")
    assert _hover_pixel(page, ig, 5, 5) == float(ig_saved[2, 0, 5, 5])
    # one method, all variants
    page.click("#px-tab-variants")
    _settle(page)
    assert page.locator("#px-variants .panel").count() == 2
    first = page.eval_on_selector("#px-variants canvas.heat", "c => c.toDataURL()")
    page.select_option("#px-method", "saliency")
    _settle(page)
    assert page.eval_on_selector("#px-variants canvas.heat", "c => c.toDataURL()") != first
    agreement = page.inner_text(".panel[data-variant='unstructured:0.5'] [data-metric='agreement']")
    assert -1.0 <= float(agreement) <= 1.0


def test_served_explorer_views_and_hover_values(browser, server, study):
    page = _open(browser, server.url)
    assert page.locator("#px-grid .card").count() == 6
    _walk_image_views(page, study)
    page.close()


def test_static_page_works_from_file_url_without_network(browser, study):
    page = _open(browser, (study / "report" / "explorer.html").as_uri())
    _walk_image_views(page, study)
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests
    page.close()


def test_tabular_bars_table_sorting_and_filters(browser, study):
    page = _open(browser, (study / "report" / "explorer.html").as_uri())
    page.select_option("#px-dataset", label="breast_cancer/MLP")
    _settle(page)
    assert page.locator("#px-grid .card table.feat").count() == 6
    page.click("#px-tab-metrics")
    page.click("th[data-key='deletion_auc']")
    _settle(page)
    column = page.eval_on_selector_all(
        "#px-table tbody tr", "rows => rows.map(r => Number(r.children[4].textContent))"
    )
    assert column == sorted(column)
    first = int(page.get_attribute("#px-table tbody tr", "data-index"))
    page.click("#px-table tbody tr")
    _settle(page)
    assert page.get_attribute("#px-view", "data-view") == "example"
    assert page.inner_text("#px-example-title").startswith(f"#{first}")
    saved = _saved(study, "breast_cancer__MLP", "dense", "saliency")[first]
    bar = page.locator("#px-methods .panel[data-method='saliency'] g[data-feature]").first
    bar.hover()
    j = int(bar.get_attribute("data-feature"))
    assert j == int(saved.abs().argmax())  # bars are ranked by |attribution|
    assert float(page.get_attribute("#px-tip [data-attr]", "data-attr")) == float(saved[j])
    from pellucid.data import load_dataset

    name = load_dataset("breast_cancer").feature_names[j]
    assert page.inner_text("#px-tip [data-feature]") == f"feature: {name}"
    page.click("#px-tab-browse")
    page.select_option("#px-outcome", "wrong")
    _settle(page)
    wrong = page.locator("#px-grid .card").count()
    page.select_option("#px-outcome", "correct")
    _settle(page)
    assert wrong + page.locator("#px-grid .card").count() == 6
    page.close()


def test_hostile_feature_names_show_as_text_and_run_nothing(browser, tmp_path):
    from pellucid import Explanation
    from pellucid.explorer import ExplorerServer, write_static_page

    names = [XSS[0], XSS[1], "plain"]
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    attr = torch.tensor([[3.0, 2.0, 1.0], [-1.0, -3.0, 2.0]])
    extras = {"feature_names": names, "class_names": XSS}
    Explanation(attr, x, XSS[0], target=torch.tensor([0, 1]), extras=extras).save(
        tmp_path / XSS[1].replace("/", "_") / "e.safetensors"
    )
    static = write_static_page(tmp_path)
    srv = ExplorerServer(tmp_path, port=0)
    srv.start()
    try:
        for url in (static.as_uri(), srv.url):
            page = _open(browser, url)
            text = page.inner_text("#px-grid")
            assert XSS[0] in text and XSS[1] in text  # shown, as text
            page.click(".card[data-index='0']")
            _settle(page)
            assert XSS[0] in page.inner_text("#px-methods")
            page.locator("g[data-feature='0']").first.hover()
            assert page.inner_text("#px-tip [data-feature]") == f"feature: {XSS[0]}"
            assert page.locator("img").count() == 0 and page.locator("main script").count() == 0
            assert page.dialogs == []
            page.close()
    finally:
        srv.shutdown()
        srv.server_close()
