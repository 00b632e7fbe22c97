"""Shared set-up of the search page's browser tests: Debian's Chromium in headless mode,
driven over WebDriver (chromedriver) with Debian's python3-selenium. Waits have deadlines;
nothing sleeps for a fixed time."""
import json
import os
import sys
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["PAGE_BASE"].rstrip("/")
OUT = os.environ.get("PAGE_OUT", "target/browser")
DOWNLOADS = os.path.join(OUT, "downloads")
KEY = os.environ.get("PAGE_KEY", "")


def make_driver(width=1280, height=900):
    os.makedirs(DOWNLOADS, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}", "--disable-dev-shm-usage"]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {
        "download.default_directory": os.path.abspath(DOWNLOADS),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": os.path.abspath(DOWNLOADS)})
    return driver


def wait(driver, condition, timeout=10, what=""):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=f"waited {timeout} s for {what}")


def js(driver, code, *args):
    return driver.execute_script(code, *args)


def searches_done(driver):
    return js(driver, "return (window.Rushes && window.Rushes.app && window.Rushes.app.searchesDone) || 0")


def wait_results(driver, after=0, timeout=20):
    """Until a search (or the intro for an empty query) finished after `after` searches."""
    wait(driver, lambda d: searches_done(d) > after and not js(d, "return document.body.classList.contains('busy')"), timeout,
         f"a search to finish (after {after})")


def logs(driver):
    return list(driver.get_log("browser"))


def problems(entries):
    """Console entries that count as errors: any SEVERE, a CSP violation, an uncaught exception."""
    return [e.get("message", "") for e in entries
            if e.get("level") == "SEVERE" or "Content Security Policy" in e.get("message", "") or "Uncaught" in e.get("message", "")]


def api(method, path, body=None):
    """The API's own answer, asked directly (not through the page)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if KEY:
        request.add_header("Authorization", "Bearer " + KEY)
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def expected_frames(ms, fps):
    """The nearest frame at the real rate (an NTSC rate such as 23.976 is 24000/1001)."""
    nominal = max(1, round(fps))
    ntsc = nominal * 1000 / 1001
    rate = ntsc if abs(fps - nominal) > 1e-6 and abs(fps - ntsc) < 0.005 else fps
    return max(0, int(ms * rate / 1000 + 0.5 + 1e-9))


def frames_timecode(frames, nominal):
    seconds, ff = divmod(frames, nominal)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}:{ff:02d}"


def expected_timecode(ms, fps):
    """HH:MM:SS:FF as docs/ui.md specifies, written independently of the page's code: frames are
    the nearest frame at the real rate (23.976 is 24000/1001), counted at the integer timecode
    base, non-drop-frame."""
    nominal = max(1, round(fps))
    frames = expected_frames(ms, fps)
    return frames_timecode(frames, nominal)


class Checks:
    def __init__(self, suite):
        self.suite = suite
        self.results = []

    def check(self, name, ok, detail=""):
        self.results.append((name, bool(ok), detail))
        print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail else ""), flush=True)

    def finish(self):
        failed = [r for r in self.results if not r[1]]
        print(f"\n[{self.suite}] {len(self.results) - len(failed)} passed, {len(failed)} failed")
        for name, _, detail in failed:
            print(f"  FAILED {name}: {detail}")
        sys.exit(1 if failed else 0)
