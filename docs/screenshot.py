"""Make docs/serve-page.png, the README's picture of the page: `make demo` first, then
`python docs/screenshot.py` (starts `convirt serve` on the demo's artifacts, reads one phantom
radiograph in headless Chromium, shows the heat map of its first finding, saves the page). With
the calibration `make demo`'s `convirt zeroshot` fitted, the page shows calibrated probabilities and
marks the findings above the Youden operating point."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "artifacts" / "demo"


def main() -> None:
    import httpx
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "convirt.cli.main", "serve", "--model", str(DEMO / "checkpoints" / "last.ckpt")]
    command += ["--index", str(DEMO / "index"), "--descriptors", "phantom", "--images", str(DEMO / "shards")]
    calibration = DEMO / "zeroshot" / "calibration.json"  # `make demo`'s convirt zeroshot fits it
    if calibration.is_file():
        command += ["--calibration", str(calibration), "--operating-point", "youden"]
    server = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(flag)
    try:
        for _ in range(360):
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            browser.get(url + "/")
            browser.find_element(By.ID, "file").send_keys(str(DEMO / "phantom" / "images" / "phantom-0-000003.png"))
            wait = WebDriverWait(browser, 120)
            wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#cases .case img[src^='blob:']")))
            browser.find_element(By.ID, "show-heat").click()
            time.sleep(1)
            browser.save_screenshot(str(ROOT / "docs" / "serve-page.png"))
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
