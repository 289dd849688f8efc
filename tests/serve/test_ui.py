"""The web UI in a real Chromium (Debian's, driven by Playwright) against a real `vistream serve`.

Screenshots of each view are written under the test's temporary directory (the path is printed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.serve.helpers_serve import Service, stream_state, wait_for, write_pipelines

for _module in ("fastapi", "uvicorn", "httpx"):
    pytest.importorskip(_module, reason=f"{_module} is not installed (the serve and dev extras)")


pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.gst]

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (dev extra)"
    )
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium; .ci/install-system-deps.sh does it)"
        )
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def test_add_watch_calibrate_and_remove_a_stream_in_the_browser(browser: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_pipelines(data_dir)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots in {shots}")
    with Service(data_dir) as service, service.client() as http:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(service.base_url + "/")
        # dashboard: add a stream through the form
        page.fill("input[name=name]", "cam1")
        page.fill("input[name=uri]", "test://?width=320&height=240&fps=10&pattern=ball")
        page.select_option("select[name=pipeline]", "light")
        page.click("button[type=submit]")
        page.wait_for_selector("text=Added cam1")
        page.wait_for_selector("tr[data-stream=cam1] .state.running", timeout=60_000)
        wait_for(lambda: stream_state(http, "cam1"), 30, "cam1 running")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "dashboard.png"))
        assert float(page.inner_text("tr[data-stream=cam1] td.fps")) > 0

        # live view: the MJPEG image plays (the ball moves between two looks)
        page.click("tr[data-stream=cam1] a:text('live')")
        image = page.locator("img#live")
        # `?.`: the predicate may run before the live view has replaced the dashboard.
        page.wait_for_function("document.querySelector('img#live')?.naturalWidth === 320", timeout=30_000)
        first = image.screenshot()
        page.wait_for_timeout(700)
        second = image.screenshot()
        assert first != second, "the live image did not change"
        page.wait_for_selector("#events li", timeout=30_000)
        page.screenshot(path=str(shots / "live.png"))

        # calibration editor: click four points, type the size, the grid shows, save
        page.click("text=Calibrate this view")
        page.wait_for_selector("text=Four points set", timeout=30_000)  # the pipeline's calibration
        page.click("#reset")
        page.wait_for_selector("text=Click point 1 of 4")
        canvas = page.locator("canvas#canvas")
        box = canvas.bounding_box()
        scale = box["width"] / 320
        page.fill("#width", "")
        page.fill("#length", "")
        for x, y in ((127.6, 216.2), (252.2, 217.7), (263.1, 98.6), (192.4, 98.1)):
            canvas.click(position={"x": x * scale, "y": y * scale})
        page.wait_for_selector("text=Type the rectangle's width W")  # validation in words
        page.fill("#width", "3.66")
        page.fill("#length", "24.19")
        page.wait_for_selector("#grid-label:has-text('Grid: cell')")
        assert page.inner_text("#calib-error") == ""
        page.screenshot(path=str(shots / "calibration.png"))
        page.fill("#length", "-2")
        page.wait_for_selector("#calib-error:has-text('positive number')")
        page.fill("#length", "24.19")
        page.wait_for_selector("#grid-label:has-text('Grid: cell')")
        pid_before = http.get("/api/streams/cam1").json()["pid"]
        page.click("#save")
        page.wait_for_selector("text=The worker restarts with it")
        saved = data_dir / "calibrations" / "cam1.yaml"
        document = yaml.safe_load(saved.read_text())
        assert document["width_m"] == 3.66 and document["length_m"] == 24.19
        assert abs(document["points"][0][0] - 127.6) < 1.0 and abs(document["points"][2][1] - 98.6) < 1.0
        view = wait_for(
            lambda: (v := stream_state(http, "cam1")) and v["pid"] != pid_before and v, 60, "restart"
        )
        assert view["calibration"] == str(saved.resolve())

        # back on the dashboard: remove the stream
        page.goto(service.base_url + "/#/")
        page.wait_for_selector("tr[data-stream=cam1]")
        page.click("tr[data-stream=cam1] button.remove")
        page.wait_for_selector("text=No streams yet")
        assert http.get("/api/streams").json() == []
        page.close()
