"""A real browser (Debian's Chromium driven by Playwright) against ``python launch.py --tiny-demo`` started
as a user would: open the page, upload a photo, run an edit, rate by click and by keyboard, screenshot to
test-artifacts/; what the command printed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from feedback.store import Store
from tests.studio_server import ROOT, make_photo, studio_server

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (bash .ci/browser-setup.sh)"),
]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


def test_browser_edit_and_rate(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    photo = make_photo(tmp_path / "astronaut.png", size=(96, 96))
    data = tmp_path / "data"
    with studio_server(data) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#instruction textarea", timeout=60_000)
            assert "EARL Studio" in page.title()

            page.set_input_files("#photo input[type=file]", str(photo))
            page.wait_for_selector("#photo img", timeout=20_000)
            page.fill("#instruction textarea", "make it black and white")
            page.press("#instruction textarea", "Enter")  # Enter runs the edit
            page.locator("#run").click()  # a second trigger while it runs is ignored (4 candidates below)
            page.wait_for_selector("#status:has-text('Done —')", timeout=60_000)
            thumbs = page.locator("#edit-gallery img")
            assert thumbs.count() >= 4  # default N = 4 candidates
            page.wait_for_selector("#edit-slider img", timeout=20_000)

            # Select candidate 2 in the gallery, then rate it by click and by keyboard shortcut.
            thumbs.nth(1).click()
            page.wait_for_selector(".cand-info:has-text('#2 of 4')", timeout=20_000)
            # Its download: the full-size PNG, served from <data>/exports (no copy in Gradio's cache).
            with page.expect_download(timeout=20_000) as download:
                page.locator("#edit-download").click()
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            assert saved.name.startswith("earl-edit-") and saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            page.locator(".kb-up").first.click()
            page.wait_for_selector(".rate-msg:has-text('Saved thumbs up')", timeout=20_000)
            page.locator("body").click(position={"x": 5, "y": 5})  # focus out of any text field
            page.keyboard.press("4")
            page.wait_for_selector(".rate-msg:has-text('★★★★')", timeout=20_000)
            page.keyboard.press("a")
            page.wait_for_selector(".rate-msg:has-text('A/B: A')", timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "studio-edit-rated.png"), full_page=True)
            # Continue from the result, then pick an example photo: the breadcrumb starts over.
            page.get_by_role("button", name="Continue editing from this ↪").first.click()
            page.wait_for_selector("#crumbs:has-text('make it black and white')", timeout=20_000)
            page.locator(".gallery-item img").first.click()
            page.wait_for_selector("#crumbs:has-text('original photo')", timeout=20_000)
            # A reloaded page starts with an empty tree and the earlier edits folded away; one click on
            # an earlier edit brings it into the tree, so its results can be continued.
            page.reload()
            page.wait_for_selector("#instruction textarea", timeout=60_000)
            assert page.locator("#history label").count() == 0
            page.locator("#earlier-box button").first.click()
            # (the newest: when the first edit had finished before the second trigger, that one ran too)
            page.locator("#earlier label:has-text('make it black and white')").first.click()
            page.wait_for_selector("#history label:has-text('make it black and white')", timeout=30_000)
            page.wait_for_selector(".cand-info:has-text('#1 of 4')", timeout=20_000)

            page.get_by_role("tab", name="Review & rate").click()
            page.wait_for_selector("#counts:has-text('1 A/B answer: 1 decided')", timeout=20_000)
            # Entering the tab opens the newest edit with its four candidates, ready to rate.
            page.wait_for_selector("#review-slider img", timeout=30_000)
            assert page.locator("#review-gallery img").count() >= 4
            page.wait_for_function("!document.querySelector('#review-gallery .progress-text')", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "studio-review.png"), full_page=True)

            # An unreadable upload after an example photo was picked: Gradio has then rebuilt the photo
            # box for this session, and the message must still be ours, not its preprocessing error.
            broken = tmp_path / "notimage.png"
            broken.write_text("this is not an image")
            page.goto(url)
            page.wait_for_selector("#instruction textarea", timeout=60_000)
            page.locator(".gallery-item img").first.click()
            page.wait_for_selector("#photo img", timeout=20_000)
            page.locator("#photo button[aria-label='Remove Image']").first.click()
            page.set_input_files("#photo input[type=file]", str(broken))
            # said as the file arrives, before any edit is asked for
            toast = page.locator(".toast-body").first
            toast.wait_for(timeout=20_000)
            assert "could not be read as an image" in toast.inner_text(), toast.inner_text()
            assert not errors, errors
        finally:
            browser.close()

    printed = (tmp_path / "studio.log").read_text()
    assert "--share" in printed and "share=True" not in printed, printed
    # the unreadable upload: one line in the log, no traceback
    assert printed.count("upload rejected: ") == 1 and "Traceback" not in printed, printed

    with Store(data) as store:
        cands = store.candidates()
        assert len(cands) == 4
        (thumb,) = store.thumbs()
        assert thumb.up and thumb.candidate.idx == 1 and thumb.rater == "tester"
        assert [(s.candidate.idx, s.stars) for s in store.stars()] == [(1, 4)]
        (pair,) = store.ratings("pair")
        assert pair.value == "A" and len(pair.candidate_ids) == 2
        assert thumb.candidate.tokens and len(thumb.candidate.tokens) == len(thumb.candidate.logprobs)
