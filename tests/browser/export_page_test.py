"""Browser test of `charrnn export --html` (issue 26): headless Chromium opens the exported page from a file
with the network off, and the page must generate, in the browser alone, the greedy text `charrnn predict`
gives for the same prefix, for an RNN over one-hot input, a GRU and an LSTM of two layers over an
embedding; seeded sampling must repeat itself and change with the seed. Saves a screenshot of the page to
SCREENSHOT when given (`make screenshot` writes examples/export.png), else to a temporary folder.

Run through `make browser` (which installs Chromium, its driver and Selenium, and builds charrnn).
Usage: python tests/browser/export_page_test.py CHARRNN_BINARY [SCREENSHOT]
"""
import os
import subprocess
import sys
import tempfile

from browser import chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

binary = os.path.abspath(sys.argv[1])
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
work = tempfile.mkdtemp()
screenshot = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.join(work, "export.png")
env = dict(os.environ, CHARRNN_CACHE=os.path.join(work, "cache"))
corpus = os.path.join(root, "data", "yuanqu.txt")
models = {
    "rnn": ["--epochs", "60"],
    "gru": ["--cell", "gru", "--layers", "2", "--embed", "32", "--hidden", "64", "--optimizer", "adam", "--lr", "0.01",
            "--clip", "1", "--epochs", "15"],
    "lstm": ["--cell", "lstm", "--layers", "2", "--embed", "32", "--hidden", "64", "--optimizer", "adam",
             "--lr", "0.01", "--clip", "1", "--epochs", "15"],
}
driver = chromium(1000, 700)
try:
    # No network at all: the page has everything it needs.
    driver.set_network_conditions(offline=True, latency=0, throughput=0)
    wait = WebDriverWait(driver, 120)

    def generate(prefix, length, temperature="", seed="0", top_k="", top_p=""):
        for name, value in [("prefix", prefix), ("num_chars", str(length)), ("temperature", temperature),
                            ("seed", seed), ("top_k", top_k), ("top_p", top_p)]:
            field = driver.find_element(By.ID, name)
            field.clear()
            field.send_keys(value)
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "output").get_attribute("data-done") == "true")
        assert driver.find_element(By.ID, "error").text == "", driver.find_element(By.ID, "error").text
        return driver.find_element(By.ID, "output").get_attribute("textContent")

    for name, flags in models.items():
        model, page = os.path.join(work, name), os.path.join(work, name + ".html")
        subprocess.run([binary, "train", "--corpus", corpus, "--limit-chars", "10000", "--val-frac", "0.1",
                        "--device", "cpu", "--out", model, "-q"] + flags, check=True, env=env)
        subprocess.run([binary, "export", "--model", model, "--html", page], check=True, env=env)
        weights = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model) if f.endswith(".safetensors"))
        size = os.path.getsize(page)
        # base64 holds 3 bytes in 4 characters; the page's own code is about 10 kB.
        assert size < weights * 4 / 3 + 20000, (size, weights)
        driver.get("file://" + page)
        wait.until(lambda d: "validation perplexity" in d.find_element(By.ID, "model").text)
        predicted = subprocess.run([binary, "predict", "--model", model, "--prefix", "分开", "--num-chars", "60",
                                    "--device", "cpu"], check=True, env=env, capture_output=True, text=True).stdout
        greedy = generate("分开", 60)
        assert greedy == predicted.rstrip("\n"), (name, greedy, predicted)
        first = generate("分开", 60, temperature="0.8", seed="7", top_k="40", top_p="0.95")
        again = generate("分开", 60, temperature="0.8", seed="7", top_k="40", top_p="0.95")
        other = generate("分开", 60, temperature="0.8", seed="8", top_k="40", top_p="0.95")
        assert first == again and first != other and len(first) == 62, (first, again, other)
        print(f"export page test: {name}: {size} bytes for {weights} of weights; greedy as predict: {greedy}")
    # An unknown character is named, and nothing is generated.
    driver.find_element(By.ID, "prefix").clear()
    driver.find_element(By.ID, "prefix").send_keys("分开☃")
    driver.find_element(By.ID, "generate").click()
    assert "☃" in driver.find_element(By.ID, "error").text
    generate("分开", 120, temperature="0.8", seed="7")
    os.makedirs(os.path.dirname(screenshot), exist_ok=True)
    driver.save_screenshot(screenshot)
    print("export page test passed; screenshot %s" % screenshot)
finally:
    driver.quit()
