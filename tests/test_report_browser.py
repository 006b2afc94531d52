"""The HTML report of a small study, opened in a real browser: headless Chromium (Debian's
``chromium`` driven through Debian's ``chromium-driver`` by Selenium, never a downloaded one),
served over http://127.0.0.1, at a desktop and a phone width. At each width: the page does not
overflow sideways (tables scroll inside their own box), every image decodes, every
table-of-contents link lands on a heading, and the console has no errors. Screenshots of both
widths are saved (into ``$REGLAB_SCREENSHOTS`` too when it is set).

Without the browser, its driver or Selenium the tests skip -- except under ``CI=true``, where
they fail: CI installs the browser (``.ci/run``), so its absence there is a fault."""

import base64
import copy
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from reglab.experiments.path import regularization_path
from reglab.experiments.runner import execute, plan_units
from reglab.experiments.schema import ExperimentSpec, load_experiments
from reglab.experiments.study import load_study, run_analysis
from reglab.report.render import write_report

ROOT = Path(__file__).resolve().parents[1]
LECTURE = ROOT / "studies" / "lecture"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTHS = (1280, 420)
HEIGHT = 900
# a subset of the lecture that still gives every section of its report (findings, tables, the
# lecture's own sections, boundaries, curves, sparsity, weights, a path, an analysis); 5 seeds so
# that the comparisons have verdicts and the findings cite them
EXPERIMENTS = ("p2_layer_regularizers", "p4_activity_after", "p6_all_together", "x_early_stopping", "x_dropout")
SEEDS = 5
EPOCHS = 2


def _browser_missing() -> str | None:
    for p, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (p.is_file() and os.access(p, os.X_OK)):
            return f"{p} not found (Debian package {pkg}; .ci/run installs it with apt)"
    try:
        import selenium.webdriver  # noqa: F401
    except ImportError as e:
        return f"selenium is not importable ({e}); install the test extra: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="module")
def browser_available():
    why = _browser_missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {why}", pytrace=False)
        pytest.skip(f"no browser for the report test: {why}")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, browser_available):
    out = tmp_path_factory.mktemp("browser_study")
    st = load_study(LECTURE)
    specs = []
    for s in load_experiments(st.files):
        if s.name in EXPERIMENTS:
            cfg = copy.deepcopy(s.config)
            cfg["train"]["epochs"] = EPOCHS
            specs.append(ExperimentSpec(cfg, s.path, s.inputs))
    assert {s.name for s in specs} == set(EXPERIMENTS)
    execute(plan_units(specs, seeds=SEEDS), out, progress=False)
    for name, ref, args in st.analyses:
        run_analysis(name, ref, st.folder, {**args, "epochs": EPOCHS}, out)
    regularization_path(next(s for s in specs if s.name == "p6_all_together"), [0.0, 1e-3], [0, 1], out=out)
    write_report(out, meta={"environment": {"cpu": "test"}, "wall_seconds": 1.0}, title=st.title,
                 intro=st.intro, sections=st.sections)
    assert (out / "report.html").is_file()
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def report_url(report_dir):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(report_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/report.html"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def driver(browser_available, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}",
                 f"--window-size={WIDTHS[0]},{HEIGHT}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver's path given explicitly: Selenium Manager is never asked (it would download one)
    d = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    d.set_page_load_timeout(30)
    d.set_script_timeout(20)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


def _open(driver, url: str, width: int) -> None:
    """Load ``url`` with a viewport exactly ``width`` CSS pixels wide."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    driver.get("about:blank")
    driver.get_log("browser")  # start each width with an empty console
    driver.get(url)
    assert driver.execute_script("return window.innerWidth") == width


# elements whose box reaches past the right edge of the viewport, unless a scrolling box (a
# table's wrapper) holds them: what a reader would have to scroll the whole page sideways to see
_OVERFLOW_JS = """
const vw = window.innerWidth, bad = [];
const scrolls = el => { for (let a = el.parentElement; a && a !== document.body && a !== document.documentElement;
                             a = a.parentElement) {
    const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll') return true; } return false; };
for (const el of document.body.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  if (r.width > 0 && (r.right > vw + 0.5 || r.left < -0.5) && !scrolls(el))
    bad.push(`<${el.tagName.toLowerCase()}${el.className ? ' class=' + el.className : ''}> `
             + `${Math.round(r.left)}..${Math.round(r.right)} px: ${(el.textContent || el.alt || '').trim().slice(0, 60)}`);
}
return {scrollWidth: document.documentElement.scrollWidth, bodyScrollWidth: document.body.scrollWidth,
        innerWidth: vw, bad: bad};
"""

_IMAGES_JS = """
const done = arguments[arguments.length - 1];
Promise.all([...document.images].map(img => img.decode().then(() => null, () => null).then(() => ({
  alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth, width: img.getBoundingClientRect().width,
  src: img.currentSrc.slice(0, 40)})))).then(done);
"""

_LINKS_JS = """
const H = 'h1,h2,h3,h4,h5,h6', out = [];
for (const a of document.querySelectorAll('a[href^="#"]')) {
  const id = decodeURIComponent(a.getAttribute('href').slice(1)), t = document.getElementById(id);
  a.click();  // a real jump: the heading must then be on screen
  const top = t ? t.getBoundingClientRect().top : null;
  out.push({href: a.getAttribute('href'), text: a.textContent, found: !!t,
            heading: !!t && (t.matches(H) || !!t.closest(H)), top: top, inNav: !!a.closest('nav')});
}
const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
return {links: out, duplicates: ids.filter((x, i) => ids.indexOf(x) !== i),
        h2: [...document.querySelectorAll('h2')].map(h => h.id), innerHeight: window.innerHeight};
"""


def _screenshot(driver, width: int, folder: Path) -> list[Path]:
    """The first screen and the whole page (Chrome DevTools ``captureBeyondViewport``)."""
    driver.execute_script("window.scrollTo(0, 0)")
    shots = {f"report_{width}px_first_screen.png": driver.get_screenshot_as_png()}
    h = driver.execute_script("return document.documentElement.scrollHeight")
    full = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": h, "scale": 1}})
    shots[f"report_{width}px_full.png"] = base64.b64decode(full["data"])
    paths = []
    extra = os.environ.get("REGLAB_SCREENSHOTS")
    for name, png in shots.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
        paths.append(folder / name)
        paths[-1].write_bytes(png)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(paths[-1], Path(extra) / name)
    return paths


@pytest.mark.parametrize("width", WIDTHS)
def test_report_in_a_real_browser(driver, report_url, report_dir, screenshot_dir, width):
    _open(driver, report_url, width)
    problems = []

    # images: every one decodes, and the report has its figures (the forest plot first)
    images = driver.execute_async_script(_IMAGES_JS)
    n_embedded = (report_dir / "report.html").read_text().count("<img ")
    assert len(images) == n_embedded >= 8, images
    assert "forest plot" in images[0]["alt"]
    for img in images:
        if not (img["complete"] and img["naturalWidth"] > 0):
            problems.append(f"image does not decode: {img}")

    # no sideways scrolling of the page
    ov = driver.execute_script(_OVERFLOW_JS)
    if ov["scrollWidth"] > ov["innerWidth"] or ov["bodyScrollWidth"] > ov["innerWidth"]:
        problems.append(f"page is {ov['scrollWidth']} px wide (body {ov['bodyScrollWidth']} px) in a "
                        f"{ov['innerWidth']} px window")
    problems += [f"sticks out of the {ov['innerWidth']} px window: {b}" for b in ov["bad"][:10]]

    # table of contents: a link to every section, each landing on a heading, on screen
    nav = driver.execute_script(_LINKS_JS)
    toc = [link["href"][1:] for link in nav["links"] if link["inNav"]]
    if len(toc) < 10 or toc != nav["h2"]:
        problems.append(f"the contents list {toc} is not the sections {nav['h2']}")
    for link in nav["links"]:
        if not (link["found"] and link["heading"]):
            problems.append(f"link {link['href']} ({link['text']!r}) lands on no heading")
        elif not (-1 <= link["top"] < nav["innerHeight"]):
            problems.append(f"after clicking {link['href']} its heading is not on screen (top {link['top']})")
    if nav["duplicates"]:
        problems.append(f"duplicate ids: {sorted(set(nav['duplicates']))}")

    # the console, after all of the above
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    problems += [f"console error: {e['message']}" for e in errors]

    shots = _screenshot(driver, width, screenshot_dir)
    assert not problems, f"at {width} px (screenshots: {shots[0].parent}):\n" + "\n".join(problems)
