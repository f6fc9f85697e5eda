"""The studio in a real browser, as a person uses it: Debian's Chromium driven by Playwright against
`streamlit run studio/app.py` and a real daemon on the embedded default (draft backend, espeak-ng).

Upload two portraits (faces drawn in code; the test does not depend on them being detected),
paste a dialogue, hear a line, play the whole dialogue, render a draft, download the MP4 and check
it: H.264 + AAC, as long as the dialogue. With DUET_SCREENSHOTS=1 it saves a picture of each page
to docs/screenshots/.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, start_daemon
from daemon.media.mp4 import probe
from test_studio_faces import draw_portrait

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DIALOGUE = ("Ann: Did you see the sunrise this morning?\n"
            "Bo: I did. The whole sky turned orange.\n"
            "Ann: Then let's get up early again tomorrow.")
STEP_MS = 30_000        # the longest wait for one step of the story
RENDER_MS = 90_000
FRAME_S = 1 / 25

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright==1.64.0")
if not CHROMIUM.exists():
    pytest.skip("Debian's Chromium is missing: apt-get install -y chromium",
                allow_module_level=True)


def start_studio(port: int, daemon_address: str, studio_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "DUET_DAEMON": daemon_address, "DUET_STUDIO_DIR": str(studio_dir)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "python"), "-m", "streamlit", "run", "studio/app.py",
             "--server.port", str(port), "--server.headless", "true",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.read() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.2)   # polling a server that is still starting; nothing to wait on
    proc.kill()
    raise AssertionError(f"streamlit did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture
def studio_url(tmp_path):
    daemon = start_daemon(tmp_path / "daemon")
    port = free_port()
    studio = start_studio(port, daemon.address, tmp_path / "studio", tmp_path / "studio.log")
    yield f"http://127.0.0.1:{port}", daemon
    studio.terminate()
    try:
        studio.wait(10)
    except subprocess.TimeoutExpired:
        studio.kill()
    daemon.stop(timeout=30)
    daemon.kill()


@pytest.fixture
def browser_page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path, prefix="chromium-"), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1440, "height": 1000},
            accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(STEP_MS)
        yield page
        context.close()


def screenshot(page, name: str) -> None:
    """The whole page (Streamlit scrolls inside its main block, so the window is made as tall
    as the content first)."""
    if os.environ.get("DUET_SCREENSHOTS") != "1":
        return
    page.wait_for_timeout(800)   # let images and charts paint
    height = page.evaluate(
        "() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": max(900, min(height + 40, 4000))})
    page.wait_for_timeout(500)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    page.set_viewport_size({"width": 1440, "height": 1000})


def go(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title, exact=True).wait_for()


def test_a_person_makes_a_talking_video_in_the_browser(studio_url, browser_page, tmp_path):
    url, daemon = studio_url
    page = browser_page
    page.goto(url)
    page.get_by_role("heading", name="Cast", exact=True).wait_for()
    page.get_by_text("Connected ·").wait_for()
    page.get_by_label("Title").fill("Sunrise")
    page.get_by_label("Title").press("Enter")

    # Cast: a portrait for each of the two people
    for i, colour in enumerate([(70, 90, 120), (120, 80, 70)]):
        portrait = tmp_path / f"portrait-{i + 1}.png"
        portrait.write_bytes(draw_portrait(colour, seed=i))
        uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Portrait")
        page.locator('[data-testid="stTab"]').nth(i).click()
        uploader.nth(i).locator('input[type="file"]').set_input_files(str(portrait))
        if i == 0:
            page.get_by_text("No portrait yet for Person 2 (a grey placeholder").wait_for()
    page.get_by_text("No portrait yet for").wait_for(state="detached")

    # Script: paste a dialogue, hear its second line, then all of it
    go(page, "Script")
    page.locator("textarea").first.fill(DIALOGUE)
    page.get_by_role("button", name="Read the script").click()
    page.get_by_text("Read 3 lines spoken by Ann, Bo.").wait_for()
    page.locator("button:visible", has_text="play_arrow").nth(1).click()
    page.locator("audio").first.wait_for(state="attached")
    page.get_by_role("button", name="Play the whole dialogue").click()
    page.get_by_text(" s in all.").wait_for()
    page.locator('[data-testid="stVegaLiteChart"]').wait_for()
    screenshot(page, "script")

    # Render: a draft, followed live until the video is there; then download it
    go(page, "Render")
    page.get_by_role("button", name="Render (draft)").click()
    page.locator("video").wait_for(state="attached", timeout=RENDER_MS)
    screenshot(page, "render")
    with page.expect_download() as download:
        page.get_by_role("button", name="MP4").click()
    video = tmp_path / "dialogue.mp4"
    download.value.save_as(video)

    [job] = daemon.client().jobs()
    assert job.state == "done" and job.title == "Sunrise"
    info = probe(video)
    assert video.stat().st_size > 0
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert abs(info.duration - job.duration) <= 2 * FRAME_S
    assert job.duration > 3.0   # three spoken lines

    # Library: the render is listed; re-opening its project leads to the Cast page
    go(page, "Library")
    page.get_by_text(job.id).wait_for()
    screenshot(page, "library")
    page.get_by_role("button", name="Open project").click()
    page.get_by_role("heading", name="Cast", exact=True).wait_for()
    page.get_by_text(f"Opened the project of render {job.id}.").wait_for()
    page.get_by_role("tab", name="1. Ann").wait_for()
    screenshot(page, "cast")
    assert (tmp_path / "studio" / "autosave.duet").is_file()
    assert list((tmp_path / "studio").glob(".*.tmp")) == []   # atomic writes leave nothing
