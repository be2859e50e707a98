"""How fast the explorer page is usable, in headless Chromium (no peer: Captum Insights,
the nearest tool, was removed from captum).

Builds example sets shaped like the default study's per-example results (digits/SmallCNN:
24 examples of 1x8x8, breast_cancer/MLP: 24 rows of 30 features; 8 variants x 7 methods,
9 metrics and two curves each) and a large one (5,000 tabular rows, 2 variants x 3
methods), then measures, best of 3 page loads each:

* static page from ``file://``: navigation start -> example grid drawn, and the click on an
  example -> every method's map drawn;
* served page (``ExplorerServer``): the same, with pages of examples fetched lazily.

Run: ``PYTHONPATH=src python benchmarks/bench_explorer.py`` (needs /usr/bin/chromium and
the playwright package).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from pellucid.explorer import ExampleSet, ExplorerServer
from pellucid.explorer._page import render_page

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VARIANTS = ["dense", "clip:agc", "clip:autoclip", "unstructured:0.5", "unstructured:0.8"]
VARIANTS += ["unstructured:0.95", "structured:0.3", "structured:0.6"]
METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad"]
METHODS += ["guided_backprop", "deeplift", "occlusion"]
METRICS = ["deletion_auc", "insertion_auc", "faithfulness", "completeness_gap"]
METRICS += ["max_sensitivity", "sparseness", "complexity", "agreement", "top_k_agreement"]


def example_set(title: str, shape: tuple[int, ...], n: int, variants, methods) -> ExampleSet:
    g = torch.Generator().manual_seed(0)
    kind = "image" if len(shape) == 3 else "tabular"
    d = int(torch.tensor(shape).prod())
    points = d // max(1, -(-d // 50)) + 1
    s = ExampleSet(
        title=title,
        kind=kind,
        inputs=torch.randn(n, *shape, generator=g),
        labels=torch.randint(0, 2, (n,), generator=g),
        feature_names=[f"feature {j}" for j in range(d)],
        class_names=["a", "b"],
        variants=list(variants),
        methods=list(methods),
    )
    for v in variants:
        s.predictions[v] = torch.randint(0, 2, (n,), generator=g)
        for m in methods:
            s.attributions[(v, m)] = torch.randn(n, *shape, generator=g)
            s.metrics[(v, m)] = {k: torch.rand(n, generator=g) for k in METRICS}
            s.curves[(v, m)] = {
                "fractions": torch.linspace(0, 1, points),
                "deletion": torch.rand(n, points, generator=g),
                "insertion": torch.rand(n, points, generator=g),
            }
    return s


def measure(browser, url: str) -> tuple[float, float]:
    best_ready, best_open = float("inf"), float("inf")
    for _ in range(3):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1'] #px-grid .card")
        ready = page.evaluate("performance.now()")
        start = time.perf_counter()
        page.click(".card[data-index='1']")
        page.evaluate("window.pellucidExplorer.ready()")
        page.wait_for_selector("#px-methods .panel")
        best_ready = min(best_ready, ready / 1e3)
        best_open = min(best_open, time.perf_counter() - start)
        page.close()
    return best_ready, best_open


def main() -> None:
    from playwright.sync_api import sync_playwright

    default = [
        example_set("digits/SmallCNN", (1, 8, 8), 24, VARIANTS, METHODS),
        example_set("breast_cancer/MLP", (30,), 24, VARIANTS, METHODS),
    ]
    large = [example_set("large", (30,), 5000, VARIANTS[:2], METHODS[:3])]
    folder = Path(tempfile.mkdtemp())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for name, sets in (("default study", default), ("5,000 examples", large)):
            html = folder / f"{name.replace(' ', '_')}.html"
            html.write_text(render_page(sets, title=name, static=True))
            ready, opened = measure(browser, html.as_uri())
            size = html.stat().st_size / 1e6
            print(f"{name:>14} static ({size:.1f} MB): grid {ready:.2f} s, example {opened:.2f} s")
            server = ExplorerServer(folder, port=0)
            server.sets = sets
            server.html = render_page(sets, title=name, static=False).encode()
            server.__dict__.pop("manifest_json", None)
            server.start()
            ready, opened = measure(browser, server.url)
            print(f"{name:>14} served: grid {ready:.2f} s, example {opened:.2f} s")
            server.shutdown()
            server.server_close()
        browser.close()


if __name__ == "__main__":
    main()
