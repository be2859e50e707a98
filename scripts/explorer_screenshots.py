"""Take screenshots of the explorer of a study folder: python explorer_screenshots.py STUDY OUT."""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from pellucid.explorer import write_static_page

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main(study: Path, out: Path) -> None:
    page_path = write_static_page(study)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-ready='1']")

        def shot(name: str) -> None:
            page.evaluate("window.pellucidExplorer.ready()")
            page.mouse.move(0, 0)
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(out / f"{name}.png")

        shot("1-examples")
        page.click(".card[data-index='4']")
        page.evaluate("window.pellucidExplorer.ready()")
        box = page.locator("canvas.heat").first.bounding_box()
        shot("2-example-all-methods")
        page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.4)
        page.screenshot(path=str(out / "3-hover.png"))
        page.click("#px-tab-variants")
        shot("4-method-all-variants")
        page.click("#px-tab-metrics")
        page.click("th[data-key='deletion_auc']")
        shot("5-metrics-table")
        page.select_option("#px-dataset", label="breast_cancer/MLP")
        page.click("#px-tab-browse")
        shot("6-tabular-examples")
        page.click(".card[data-index='0']")
        shot("7-tabular-example")
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
