"""Real-browser check of ``leukoshift app``: start it, upload a real cell image in headless
Chromium, wait for the prediction, and save a screenshot.

    python benchmarks/app_screenshot.py [--checkpoint best.ckpt] [--manifest m.csv ...]
        [--image cell.jpg] [--sample 20] [--out /tmp/app_screenshot.png]

Without ``--checkpoint`` an untrained regnetx_002 (64 px) is made on the spot and two
synthetic labs serve as the manifests, so the page shows the whole pipeline but not a
meaningful prediction; pass a fine-tuned ``best.ckpt`` and real manifests for that.
``--sample N`` keeps N labelled training rows per source and class of the manifests
(in a temporary manifest), so the app embeds a few hundred images, not tens of thousands.
The image uploaded defaults to a PBC eosinophil from ``../shared/data``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``) and selenium (``pip install -e .[dev]``). When any of them or the real
data is missing, the script says so and exits 0: it is a check to run by hand, not a
failure on machines without a browser.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LEUKOSHIFT_SHARED_DATA") or REPO.parent / "shared" / "data")
DEFAULT_IMAGE = SHARED / "pbc" / "PBC_dataset_normal_DIB" / "eosinophil" / "EO_100213.jpg"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    # the UMAP is a WebGL scatter (Scattergl); without a GPU Chromium needs SwiftShader for it
    "--enable-unsafe-swiftshader",
)


def skip(message: str) -> None:
    print(f"app screenshot skipped: {message}")
    sys.exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_setup(folder: Path) -> tuple[Path, list[Path]]:
    """An untrained checkpoint and two synthetic labs (what the tests use)."""
    sys.path.insert(0, str(REPO))
    from leukoshift.data.synth import render_labs
    from tests.explain.conftest import make_checkpoint

    checkpoint = make_checkpoint(folder / "best.ckpt", "regnetx_002", 64)
    return checkpoint, [render_labs(folder / "synth", labs=2, per_class=4, size=64, progress=False)]


def sampled(manifests: list[Path], per_class: int, folder: Path) -> list[Path]:
    """Each manifest cut to ``per_class`` training rows per (source, label)."""
    from leukoshift.data.manifest import read_manifests, write_manifest

    out = []
    for path in manifests:
        frame = read_manifests([path]).frame  # absolute paths: the copy lives elsewhere
        labelled = frame[(frame["label"] != "") & (frame["split"] == "train")]
        keep = labelled.groupby(["source", "label"]).head(per_class).reset_index(drop=True)
        out.append(write_manifest(keep, folder / f"sample_{path.stem}.csv"))
        print(f"{path}: {len(keep)} of {len(frame)} rows kept for the app")
    return out


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    url = f"http://127.0.0.1:{port}/_stcore/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the app did not answer on port {port} within {timeout:.0f} s")


_HOVER_FIRST_POINT = """
const gd = document.querySelector('.js-plotly-plot');
const trace = gd._fullData.find(t => t.visible === true);  // arrays decoded from base64
const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
const box = gd.getBoundingClientRect();
return [xa._offset + xa.l2p(trace.x[0]) - box.width / 2,
        ya._offset + ya.l2p(trace.y[0]) - box.height / 2];
"""


def drive(
    port: int,
    image: Path,
    out: Path,
    chromium: str,
    driver_path: str,
    timeout: float,
    data_view: bool = False,
) -> str:
    """Open the app, upload ``image``, wait for prediction, overlay and neighbours; screenshot.

    With ``data_view`` also open the Data view, hover the first UMAP point (its thumbnail
    appears) and save ``<out stem>_data.png``.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1500,1400")
    browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, timeout)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']")))
        upload.send_keys(str(image))
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Prediction:"))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .bars")) > 0)

        # every picture on the page (input, overlay, neighbours) decoded
        def images_loaded(b: webdriver.Chrome) -> bool:
            return bool(
                b.execute_script(
                    "const imgs = [...document.querySelectorAll('[data-testid=\"stImage\"] img')];"
                    "return imgs.length >= 3 && imgs.every(i => i.complete && i.naturalWidth > 0);"
                )
            )

        wait.until(images_loaded)
        time.sleep(1.0)  # let plotly finish its transition
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out))
        text = str(browser.find_element(By.TAG_NAME, "body").text)
        if data_view:
            browser.find_element(By.XPATH, "//section[@data-testid='stSidebar']//label[.//p[text()='Data']]").click()
            frame = wait.until(ec.presence_of_element_located((By.TAG_NAME, "iframe")))
            browser.switch_to.frame(frame)
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot .gl-canvas")))
            time.sleep(1.0)
            dx, dy = browser.execute_script(_HOVER_FIRST_POINT)
            gd = browser.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
            ActionChains(browser).move_to_element_with_offset(gd, int(dx), int(dy)).perform()
            time.sleep(1.0)
            browser.switch_to.default_content()
            browser.save_screenshot(str(out.with_name(f"{out.stem}_data.png")))
        return text
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="fine-tuned best.ckpt (default: a tiny untrained one)")
    parser.add_argument("--manifest", type=Path, action="append", default=[], help="repeatable")
    parser.add_argument("--sample", type=int, default=0, help="training rows per source and class to keep (0: all)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image to upload")
    parser.add_argument("--out", type=Path, default=Path("/tmp/app_screenshot.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--driver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the app")
    parser.add_argument("--data-view", action="store_true", help="also screenshot the Data view")
    args = parser.parse_args()

    if not Path(args.chromium).is_file() or not Path(args.driver).is_file():
        skip("chromium / chromedriver not found (apt-get install -y chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        skip("selenium is not installed (pip install -e '.[dev]')")
    if not args.image.is_file():
        skip(f"{args.image} not found (the real data lives in {SHARED})")

    with tempfile.TemporaryDirectory(prefix="app-screenshot-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "LEUKOSHIFT_CACHE": str(work / "cache")}
        os.environ["LEUKOSHIFT_CACHE"] = env["LEUKOSHIFT_CACHE"]  # caches stay in the temp folder
        if args.checkpoint is None:
            checkpoint, manifests = tiny_setup(work)
        else:
            checkpoint, manifests = args.checkpoint, list(args.manifest)
        if args.sample > 0 and manifests:
            manifests = sampled(manifests, args.sample, work)
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "leukoshift",
            "app",
            "--checkpoint",
            str(checkpoint),
            "--port",
            str(port),
        ]
        cmd += ["--address", "127.0.0.1", "--k", "6"]
        for m in manifests:
            cmd += ["--manifest", str(m)]
        log = (work / "app.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_healthy(port, proc, args.timeout)
            started = time.monotonic()
            text = drive(port, args.image, args.out, args.chromium, args.driver, args.timeout, args.data_view)
            print(f"prediction shown {time.monotonic() - started:.1f} s after opening the page")
        except Exception:
            log.flush()
            print((work / "app.log").read_text()[-4000:])
            raise
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # the app and the Streamlit server it started
            proc.wait(timeout=30)
            log.close()
    line = next((t for t in text.splitlines() if t.startswith("Prediction:")), "")
    print(f"{line}\nscreenshot -> {args.out}")


if __name__ == "__main__":
    main()
