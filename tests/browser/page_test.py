"""Browser test of `charrnn serve`'s page (issue 17): headless Chromium loads the page, types a prefix,
presses Generate and finds the streamed text, which must be, character for character, what the JSON API
gives for the same request. Saves a screenshot of the page to SCREENSHOT when given (`make screenshot`
writes examples/serve.png), else to a temporary folder.

Run through `make browser` (which installs Chromium, its driver and Selenium, and builds charrnn).
Usage: python tests/browser/page_test.py CHARRNN_BINARY [SCREENSHOT]
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

from browser import chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

binary = os.path.abspath(sys.argv[1])
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
work = tempfile.mkdtemp()
screenshot = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.join(work, "serve.png")
env = dict(os.environ, CHARRNN_CACHE=os.path.join(work, "cache"))
model = os.path.join(work, "demo")
subprocess.run([binary, "train", "--corpus", os.path.join(root, "data", "yuanqu.txt"), "--limit-chars", "10000",
                "--epochs", "60", "--val-frac", "0.1", "--out", model, "-q"], check=True, env=env)
server = subprocess.Popen([binary, "serve", "--model", model, "--port", "0"], stderr=subprocess.PIPE, text=True,
                          env=env)
try:
    line = server.stderr.readline()
    address = re.search(r"http://\S+", line).group(0)
    driver = chromium(1000, 760)
    try:
        driver.get(address + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "rnn 1×256" in d.find_element(By.ID, "model").text)
        assert "held-out perplexity" in driver.find_element(By.ID, "model").text
        driver.find_element(By.ID, "prefix").send_keys("分开")
        for name, value in [("num_chars", "60"), ("temperature", "0.8"), ("seed", "7"), ("samples", "2")]:
            field = driver.find_element(By.ID, name)
            field.clear()
            field.send_keys(value)
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "output").get_attribute("data-done") == "true")
        shown = [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, "#output .sample .text")]
        error = driver.find_element(By.ID, "error").text
        request = json.dumps({"prefix": "分开", "num_chars": 60, "temperature": 0.8, "seed": 7, "samples": 2})
        api = json.load(urllib.request.urlopen(urllib.request.Request(address + "/v1/generate", data=request.encode())))
        expected = [s["generated"] for s in api["samples"]]
        assert error == "", error
        # The page holds exactly what the API generates (and shows its white space: `white-space: pre-wrap`).
        assert shown == expected, (shown, expected)
        style = driver.execute_script(
            "return getComputedStyle(document.querySelector('#output .sample')).whiteSpace")
        assert style == "pre-wrap", style
        assert [len(e) for e in expected] == [60, 60]
        os.makedirs(os.path.dirname(screenshot), exist_ok=True)
        driver.save_screenshot(screenshot)
        print("browser test passed: the page streamed 2 samples of 60 characters; screenshot %s" % screenshot)
    finally:
        driver.quit()
finally:
    server.terminate()
    server.wait(timeout=30)
