"""The page in a real browser: headless Chromium reads a phantom radiograph, shows its findings and
similar cases with the most probable finding's heat map, runs a text search, and leaves a screenshot in artifacts/."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from convirt.data.images import load_grayscale
from convirt.serve.app import create_app

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "artifacts" / "serve-page.png"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="Chromium and ChromeDriver not installed (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture()
def served(service):
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def most_probable(diagnosis):
    """The finding the page ranks first: by calibrated probability where there is one, else by score."""
    return max(diagnosis["findings"], key=lambda f: f["score"] if f["probability"] is None else f["probability"])[
        "finding"
    ]


def shown_heat(browser):
    """The finding whose heat map the canvas shows, checked against the one picked in the list."""
    from selenium.webdriver.common.by import By

    finding = browser.find_element(By.ID, "heat").get_attribute("data-finding")
    assert finding == browser.find_element(By.ID, "heat-finding").get_attribute("value")
    return finding


def test_the_page_reads_a_radiograph_and_searches_by_text(served, service, archive):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, rows = archive
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(served + "/")
        wait = WebDriverWait(browser, 60)
        assert "not a diagnostic device" in browser.find_element(By.CSS_SELECTOR, ".notice").text
        browser.find_element(By.ID, "file").send_keys(rows[0].image_path)
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#findings .finding")))
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#cases .case")))
        findings = browser.find_elements(By.CSS_SELECTOR, "#findings .finding")
        # No calibration: scores, not percentages, and the note that they are uncalibrated.
        assert len(findings) == len(service.finding_names) and "score 0." in findings[0].text
        assert "%" not in findings[0].text and browser.find_element(By.ID, "score-note").is_displayed()
        assert len(browser.find_elements(By.CSS_SELECTOR, "#cases .case")) == 5
        browser.find_element(By.ID, "show-heat").click()  # the heat map over the image: the most probable finding's
        wait.until(lambda b: b.find_element(By.ID, "heat").is_displayed())
        assert shown_heat(browser) == most_probable(service.diagnose(load_grayscale(rows[0].image_path)))
        query = browser.find_element(By.ID, "query")
        query.send_keys("enlarged cardiac silhouette")
        query.submit()
        wait.until(ready.text_to_be_present_in_element((By.ID, "status"), 'cases for "enlarged cardiac silhouette"'))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#cases .case")) == 12
        # Open an archive case with the keyboard: read from its stored vector, its own patient left out.
        picked = browser.find_element(By.ID, "case-id")
        picked.send_keys("3", Keys.ENTER)
        wait.until(ready.text_to_be_present_in_element((By.ID, "status"), "findings scored"))
        shown = [
            int(c.text.split("case ")[1].split()[0]) for c in browser.find_elements(By.CSS_SELECTOR, "#cases .legend")
        ]
        assert shown and all(rows[i].patient_id != rows[3].patient_id for i in shown)
        browser.find_element(By.ID, "show-heat").click()
        wait.until(lambda b: b.find_element(By.ID, "heat").is_displayed())
        assert shown_heat(browser) == most_probable(service.diagnose_case(3))
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT)) and SCREENSHOT.stat().st_size > 10_000
    finally:
        browser.quit()


def test_the_page_shows_calibrated_probabilities_and_marks_findings_above_the_operating_point(
    archive, calibration_file
):
    import dataclasses

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from convirt.serve.service import CaseService
    from convirt.zeroshot.calibration import Calibration
    from tests.serve.client import port_of
    from tests.serve.client import served as serving

    loaded, folder, rows = archive
    fitted = Calibration.load(calibration_file)
    # The first finding's youden threshold at 0 (it passes), the others' above 1 (they cannot).
    points = {
        name: {**rules, "youden": dataclasses.replace(rules["youden"], threshold=0.0 if i == 0 else 1.5)}
        for i, (name, rules) in enumerate(fitted.operating_points.items())
    }
    service = CaseService(
        loaded, folder, "phantom", knn_k=5, calibration=dataclasses.replace(fitted, operating_points=points)
    )
    first, last = service.finding_names[0], service.finding_names[-1]  # the last is not in the file
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    with serving(create_app(service)) as server:
        browser = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            browser.get(f"http://127.0.0.1:{port_of(server)}/")
            browser.find_element(By.ID, "file").send_keys(rows[0].image_path)
            WebDriverWait(browser, 60).until(ready.presence_of_element_located((By.CSS_SELECTOR, "#findings .finding")))
            shown = {f.text.split(":")[0]: f.text for f in browser.find_elements(By.CSS_SELECTOR, "#findings .finding")}
            assert (
                "probability" in shown[first]
                and "%" in shown[first]
                and "above operating point (youden)" in shown[first]
            )
            assert "score 0." in shown[last] and "%" not in shown[last] and "operating point" not in shown[last]
            badges = browser.find_elements(By.CSS_SELECTOR, "#findings .badge")
            assert len(badges) == 1 and badges[0].text == "above operating point (youden)"
            assert browser.find_element(By.ID, "point-note").is_displayed()
            assert browser.find_element(By.ID, "score-note").is_displayed()  # the last finding has a score only
        finally:
            browser.quit()


@pytest.mark.slow
def test_the_page_diagnoses_without_heat_maps_where_the_service_runs_onnx(onnx_service, archive):
    """`convirt serve --runtime onnx` refuses saliency maps (409): the page asks again without them, once."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.serve.client import port_of
    from tests.serve.client import served as serving

    _, _, rows = archive
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    with serving(create_app(onnx_service)) as server:
        browser = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            browser.get(f"http://127.0.0.1:{port_of(server)}/")
            wait = WebDriverWait(browser, 60)
            browser.find_element(By.ID, "file").send_keys(rows[0].image_path)
            wait.until(ready.text_to_be_present_in_element((By.ID, "status"), "findings scored"))
            assert len(browser.find_elements(By.CSS_SELECTOR, "#findings .finding")) == len(onnx_service.finding_names)
            assert not browser.find_element(By.ID, "show-heat").is_enabled()  # no maps to show
            browser.find_element(By.ID, "case-id").send_keys("3", Keys.ENTER)  # the next reading asks without maps
            wait.until(ready.text_to_be_present_in_element((By.ID, "status"), "findings scored"))
            assert "error" not in (browser.find_element(By.ID, "status").get_attribute("class") or "")
        finally:
            browser.quit()
