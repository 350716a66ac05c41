"""Open every page of a built book in headless Chromium and report what a reader would miss.

Used by tests/book/test_browser.py, and runnable by hand:

    python tests/book/browser_check.py _build/html --screenshots _build/screenshots

The site is served on 127.0.0.1 only; any request elsewhere is blocked and reported, so the check
also proves that the book needs no network. Per page it asserts: no failed request (blocked,
refused or HTTP >= 400), math typeset by MathJax, every plotly figure drew its SVG, every embedded
widget view rendered, and no console error except the theme's known THEBE_JS_URL one. A full-page
screenshot of each page is saved.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

KNOWN_CONSOLE_ERRORS = ("THEBE_JS_URL",)  # sphinx-book-theme declares it twice on every page

# Runs in the page once it has loaded: what is on it and what got drawn.
PAGE_STATE_JS = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const math = [...document.querySelectorAll("div.math, span.math")];
  const figures = [...document.querySelectorAll(".plotly-graph-div")];
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  return {
    math: math.length,
    mathTypeset: math.filter(m => m.querySelector("mjx-container")).length,
    figures: figures.length,
    figuresDrawn: figures.filter(f => f.querySelector("svg.main-svg")).length,
    views: views.length,
    viewsRendered: views.filter(v => {
      const area = v.parentElement.querySelector(".widget-subarea");
      return area !== null && area.querySelector(".jupyter-widgets, .lm-Widget") !== null;
    }).length,
  };
}
"""
DRAWN_JS = """
() => {
  const figs = [...document.querySelectorAll(".plotly-graph-div")];
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
  return figs.every(f => f.querySelector("svg.main-svg"))
    && document.querySelectorAll(".widget-subarea .jupyter-widgets, .widget-subarea .lm-Widget").length >= views.length;
}
"""


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    state: dict = field(default_factory=dict)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 (a free port) for the duration of the block; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def pages(site: Path) -> list[str]:
    """Every HTML page of the site, as paths relative to it."""
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html") if "_static" not in p.parts)


def check_page(context, base: str, page: str, screenshots: Path | None) -> PageReport:
    report = PageReport(page)
    tab = context.new_page()
    tab.on("requestfailed", lambda r: report.problems.append(
        f"failed request {r.url} ({r.failure})"))
    tab.on("response", lambda r: r.status >= 400 and report.problems.append(
        f"failed request {r.url} (HTTP {r.status})"))
    tab.on("console", lambda m: m.type == "error" and not any(k in m.text for k in KNOWN_CONSOLE_ERRORS)
           and report.problems.append(f"console error: {m.text}"))
    tab.on("pageerror", lambda e: not any(k in str(e) for k in KNOWN_CONSOLE_ERRORS)
           and report.problems.append(f"page error: {e}"))
    tab.goto(f"{base}/{page}", wait_until="load")
    try:
        tab.wait_for_function(DRAWN_JS, timeout=15000)
    except Exception:
        pass  # reported precisely below
    tab.wait_for_timeout(300)  # let late requests (fonts, lazy MathJax parts) start and fail visibly
    state = tab.evaluate(PAGE_STATE_JS)
    report.state = state
    if state["mathTypeset"] < state["math"]:
        report.problems.append(f"math not typeset: {state['math'] - state['mathTypeset']} of {state['math']}")
    if state["figuresDrawn"] < state["figures"]:
        report.problems.append(f"plotly figures not drawn: {state['figures'] - state['figuresDrawn']} "
                               f"of {state['figures']}")
    if state["viewsRendered"] < state["views"]:
        report.problems.append(f"widget views not rendered: {state['views'] - state['viewsRendered']} "
                               f"of {state['views']}")
    if screenshots is not None:
        shot = screenshots / (page.replace("/", "__").removesuffix(".html") + ".png")
        tab.screenshot(path=str(shot), full_page=True)
    tab.close()
    return report


def check_site(site: Path, screenshots: Path | None = None, chromium: str | None = None,
               only: list[str] | None = None) -> list[PageReport]:
    """Check every page of the built site (or the pages in `only`); returns one report per page."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    if screenshots is not None:
        shutil.rmtree(screenshots, ignore_errors=True)
        screenshots.mkdir(parents=True)
    with serve(site) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1280, "height": 1000})

        def only_loopback(route):
            if urlparse(route.request.url).hostname == "127.0.0.1" or route.request.url.startswith("data:"):
                route.continue_()
            else:
                route.abort("blockedbyclient")

        context.route("**/*", only_loopback)
        reports = [check_page(context, base, page, screenshots) for page in only or pages(site)]
        browser.close()
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("--screenshots", type=Path)
    args = parser.parse_args()
    reports = check_site(args.site, args.screenshots)
    for r in reports:
        print(f"{'FAIL' if r.problems else 'ok  '} {r.page} {r.state}")
        for problem in r.problems:
            print(f"       {problem}")
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
