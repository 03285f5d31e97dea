#!/usr/bin/env python3
"""The dashboard's first load in headless Chromium, for `shoal-bench --only ui`
(crates/shoal-bench/src/ui.rs).

    ui_load.py --url URL --token TOKEN --runs N

Each run starts a browser with an empty cache, puts the token in the tab's
sessionStorage (as signing in does) on a page outside /ui, then opens
/ui/#/overview and waits until the overview has rendered (its figures and
charts drawn: `window.dash.firstReadyMs`, from the navigation's start).
Bytes come from the Resource Timing API (`transferSize`: headers and bodies
as they crossed the wire, compressed): the page and its assets apart from the
API calls the overview makes. Then the same tab loads the page again (the
browser's cache warm). Prints one JSON line.
"""

import argparse
import json
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

MEASURE = """
const nav = performance.getEntriesByType('navigation')[0];
const res = performance.getEntriesByType('resource');
const api = res.filter(r => new URL(r.name).pathname.startsWith('/v1/'));
const assets = res.filter(r => !new URL(r.name).pathname.startsWith('/v1/'));
const sum = (xs) => xs.reduce((a, r) => a + (r.transferSize || 0), 0);
return {ms: window.dash.firstReadyMs, page: nav.transferSize, assets: sum(assets),
        api: sum(api), files: assets.length, calls: api.length,
        decoded: nav.decodedBodySize + assets.reduce((a, r) => a + (r.decodedBodySize || 0), 0),
        source: [...document.querySelectorAll('#main > p.note')].map(e => e.textContent).join(' ')};
"""


def browser():
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--disk-cache-size=104857600"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def rendered(d, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = d.execute_script("return !!(window.dash && window.dash.firstReadyMs && window.dash.view === 'overview'"
                              " && document.querySelectorAll('#main canvas').length >= 2)")
        if ok:
            return d.execute_script(MEASURE)
        time.sleep(0.01)
    raise AssertionError("the overview did not render within %d s" % timeout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    url = a.url.rstrip("/")
    cold, warm = [], []
    for _ in range(a.runs):
        d = browser()
        try:
            d.get(url + "/healthz")
            d.execute_script("sessionStorage.setItem('shoal.token', arguments[0])", a.token)
            d.get(url + "/ui/#/overview")
            cold.append(rendered(d))
            d.get(url + "/healthz")
            d.get(url + "/ui/#/overview")
            warm.append(rendered(d))
        finally:
            d.quit()
    print(json.dumps({"cold": cold, "warm": warm}))


if __name__ == "__main__":
    main()
