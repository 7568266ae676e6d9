"""What the browser tests share: headless Chromium under Selenium, started as CI can run it (as root, no
GPU, a small /dev/shm), from Debian's chromium and chromedriver (or CHROMIUM and CHROMEDRIVER)."""
import os

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


def chromium(width, height):
    """A headless Chromium of that window size, driven by Selenium."""
    options = Options()
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)
