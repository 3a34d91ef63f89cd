"""The web app in a real headless Chromium (Debian's ``chromium``, driven by ``playwright``).

One walk through the page, the way a person uses it: attach an image in Chat and watch the answer
stream in; caption two files; start a fine-tune on an uploaded zip, watch the loss plot grow, stop
it; read the Plugins tab. Every request the page makes must go to the app itself. A screenshot of
each tab is saved in ``test-artifacts/``; with ``MMASSIST_UPDATE_SCREENSHOTS=1`` they are also
copied to ``docs/screenshots/<tab>.png`` for the README (Chat and Caption show the starter model).

Needs the ``playwright`` Python package and ``/usr/bin/chromium`` (``make test`` installs both;
never ``playwright install``: no browser is downloaded). Skipped with the reason when either is absent.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from mmassist import core
from mmassist.ui.testing import serve, tiny_caption_config, tiny_model

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "core" / "recipes" / "starter" / "examples"  # the starter's held-out examples
ARTIFACTS = REPO / "test-artifacts"
README_SHOTS = REPO / "docs" / "screenshots"
CHROMIUM = Path(os.environ.get("MMASSIST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 90_000
pytestmark = pytest.mark.slow

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                               "(pip install playwright; the browser is Debian's chromium, not a download)")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MMASSIST_CHROMIUM)",
                allow_module_level=True)

# Records every text the newest assistant message shows, so streaming can be checked afterwards.
WATCH_ANSWER = """() => {
  window.__answers = [];
  const box = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = box.querySelectorAll('[data-testid="bot"]');
    if (!bots.length) return;
    const text = bots[bots.length - 1].innerText.trim();
    if (text && window.__answers[window.__answers.length - 1] !== text) window.__answers.push(text);
  }).observe(box, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from mmassist.ui.app import build_app

    host = core.Host(load_entrypoints=False)
    squares, model = tiny_model(tmp_path_factory.getbasetemp() / "ui-tiny", host=host)
    app = build_app(str(model), host=host, runs_dir=tmp_path_factory.mktemp("runs"))
    with serve(app) as url:
        yield url, squares


@pytest.fixture(scope="module")
def page(app_url):
    url, _ = app_url
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 1000})
            pg.set_default_timeout(TIMEOUT_MS)
            pg.requests = []
            pg.on("request", lambda r: pg.requests.append(r.url))
            pg.goto(url, wait_until="load")
            pg.wait_for_selector("#chat-input textarea")
            yield pg
        finally:
            browser.close()


def shoot(page, tab: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"ui-{tab}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("MMASSIST_UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SHOTS / f"{tab}.png")


def close_toasts(page) -> None:
    """Close the notices earlier steps left (before a screenshot). Clicked from the page, again on each poll
    until none is left: a toast that is closing by itself meanwhile is inert and moving, which a Playwright
    click waits on until it times out."""
    page.wait_for_function("() => { document.querySelectorAll('.toast-close').forEach(b => b.click()); "
                           "return !document.querySelector('.toast-body'); }")


def wait_text(page, selector: str, text: str) -> None:
    """Wait until the element's visible text contains ``text``."""
    page.wait_for_function("([sel, text]) => (document.querySelector(sel)?.innerText || '').includes(text)",
                           arg=[selector, text])


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_chat_with_an_uploaded_image_streams_the_answer(page, app_url):
    _, squares = app_url
    page.evaluate(WATCH_ANSWER)
    page.set_input_files("#chat-input input[type=file]", str(squares / "red.png"))
    page.wait_for_selector("#chat-input img, #chat-input .thumbnail-item")  # the attachment is shown
    page.fill("#chat-input textarea", "Describe.")
    page.press("#chat-input textarea", "Enter")
    page.wait_for_function("() => (window.__answers || []).includes('a red square')")
    answers = page.evaluate("window.__answers")
    assert answers[-1] == "a red square"
    assert len(answers) >= 2 and all("a red square".startswith(a) for a in answers), \
        f"the answer did not stream in: {answers}"
    # No Share button on the picture (it only works on Hugging Face Spaces: "Must be on Spaces to share").
    labels = page.evaluate("() => [...document.querySelectorAll('#chatbot button')].filter(b => b.checkVisibility())"
                           ".map(b => "
                           "(b.getAttribute('aria-label') || '') + ' ' + (b.title || '') + ' ' + b.innerText)")
    assert not [x for x in labels if "share" in x.lower()], labels


def test_a_corrupt_video_shows_a_readable_error_and_chat_goes_on(page, app_url, tmp_path):
    _, squares = app_url
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 2000)  # an MP4 header, then nothing
    answered(page, 1)  # the box takes a message again once the last answer is complete
    page.set_input_files("#chat-input input[type=file]", str(broken))
    page.fill("#chat-input textarea", "What happens?")
    page.press("#chat-input textarea", "Enter")
    page.locator(".toast-body").filter(has_text="broken.mp4").first.wait_for()  # a toast...
    wait_text(page, "#chatbot", "as a video")  # ...and a note in the conversation
    page.click("#chatbot button[aria-label=Clear]")  # a new conversation
    page.evaluate(WATCH_ANSWER)
    page.set_input_files("#chat-input input[type=file]", str(squares / "yellow.png"))
    page.fill("#chat-input textarea", "Describe.")  # the box is usable again
    page.press("#chat-input textarea", "Enter")
    page.wait_for_function("() => (window.__answers || []).includes('a yellow square')")
    page.evaluate("window.__answers = []")
    page.click("#chatbot button[aria-label=Retry]")  # regenerate: the same greedy answer, streamed again
    page.wait_for_function("() => (window.__answers || []).includes('a yellow square')")


BOT_LENGTH = """() => { const b = document.querySelectorAll('#chatbot [data-testid=bot]');
  return b.length ? b[b.length - 1].innerText.length : 0 }"""


def test_stop_ends_the_answer_at_once(page, app_url, tmp_path_factory, monkeypatch):
    """Stop in Chat: the answer stops growing when the button is pressed, and the box takes the next
    message. A model trained for one step rambles up to max_new_tokens, at 50 tokens a second (the tiny
    model alone would finish 1,024 before the click lands on a quiet machine)."""
    import time

    from mmassist.ui.models import LoadedModel

    real_stream = LoadedModel.stream

    def paced(self, pieces):
        for piece in real_stream(self, pieces):
            time.sleep(0.02)
            yield piece

    monkeypatch.setattr(LoadedModel, "stream", paced)  # the app serves from this process
    _, squares = app_url
    rambler = tmp_path_factory.getbasetemp() / "ui-rambler"
    if not (rambler / "manifest.json").is_file():
        core.finetune(tiny_caption_config(squares, video=False, max_steps=1), output_dir=rambler,
                      host=core.Host(load_entrypoints=False))
    page.click("#chatbot button[aria-label=Clear]")
    picker = page.locator("#model-picker input")
    default = picker.input_value()
    picker.fill(str(rambler))
    picker.press("Enter")
    page.click("#chat-parameters .label-wrap")  # open "Parameters"
    max_new = page.locator("#chat-parameters input[type=number]").nth(2)
    max_new.fill("1024")
    max_new.press("Enter")
    try:
        page.fill("#chat-input textarea", "Tell me a long story.")
        page.press("#chat-input textarea", "Enter")
        page.wait_for_selector("#chat-input button.stop-button", state="visible")
        page.wait_for_function(f"() => ({BOT_LENGTH})() > 20")
        page.locator("#chat-input button.stop-button").click(force=True)  # it pulses: never "stable"
        page.wait_for_timeout(300)  # the events already on their way
        stopped = page.evaluate(BOT_LENGTH)
        page.wait_for_timeout(2500)
        assert page.evaluate(BOT_LENGTH) == stopped, "the answer kept growing after Stop"
        assert stopped < 1000
        page.wait_for_selector("#chat-input textarea:not([disabled])")
    finally:
        max_new.fill("64")
        max_new.press("Enter")
        page.click("#chat-parameters .label-wrap")
        pick_model(page, "(default)")
        page.wait_for_function("(v) => document.querySelector('#model-picker input').value === v", arg=default)
        page.click("#chatbot button[aria-label=Clear]")


CARDS = "#chatbot button.example"


def answered(page, n: int) -> None:
    """Wait until the conversation has ``n`` answers and nothing is being generated."""
    page.wait_for_function("""(n) => document.querySelectorAll('#chatbot [data-testid=bot]').length >= n
      && !document.querySelector('#chat-input button.stop-button')?.checkVisibility()
      && !document.querySelector('#chat-input textarea').disabled""", arg=n)


def clear_chat(page) -> None:
    """Start a new conversation (the Clear button is there once something was said)."""
    clear = page.locator("#chatbot button[aria-label=Clear]")
    if clear.count():
        clear.click()


def pick_model(page, label_part: str) -> None:
    page.locator("#model-picker input").click()
    page.locator("#model-picker [role=option]").filter(has_text=label_part).click()


def test_the_starters_examples_are_cards_that_send_themselves(page):
    """The starter's examples show as cards in the empty chat when the starter is picked (videos with
    their first frame), a click sends one and the starter answers; another model shows none."""
    clear_chat(page)
    assert page.locator(CARDS).count() == 0  # the default model here is not the starter
    assert not page.locator("#model-scope").is_visible()
    pick_model(page, "starter")
    page.wait_for_selector(CARDS)
    page.wait_for_selector("#model-scope")  # says what the starter can see, and that a photo is outside it
    assert "photo is outside" in page.inner_text("#model-scope")
    page.wait_for_function("() => [...document.querySelectorAll('#chatbot button.example video')]"
                           ".every(v => v.readyState >= 2)")  # a frame to show, not a blank tile
    assert page.locator(f"{CARDS} video").count() >= 1
    page.evaluate(WATCH_ANSWER)
    page.locator(CARDS).filter(has_text="Review:").first.click()
    page.wait_for_function("() => ['positive', 'negative'].includes((window.__answers || []).at(-1))")
    # The README's Chat screenshot: the starter answering one of its picture examples, then a digit.
    clear_chat(page)
    page.locator(CARDS).filter(has_text="Describe this image.").first.click()
    answered(page, 1)
    close_toasts(page)
    shoot(page, "chat")
    pick_model(page, "(default)")
    clear_chat(page)
    page.wait_for_timeout(500)
    assert page.locator(CARDS).count() == 0, "the starter's examples stayed for another model"
    assert not page.locator("#model-scope").is_visible()


VISIBLE_ERRORS = """() => [...document.querySelectorAll('.error')].filter(e => e.checkVisibility()
  && !e.closest('.toast-body')).map(e => e.innerText)"""


def test_caption_two_files_in_the_browser(page, app_url):
    _, squares = app_url
    open_tab(page, "Caption")
    page.click("#caption-button")  # no files yet: one toast says so, no red "Error" on the table
    page.locator(".toast-body").filter(has_text="no files to caption").first.wait_for()
    assert page.evaluate(VISIBLE_ERRORS) == []
    page.set_input_files("#caption-files input[type=file]", [str(squares / "green.png"), str(squares / "blue.png")])
    wait_text(page, "#caption-files", "blue")  # the file list shows "blue" and ".png" apart
    page.click("#caption-button")
    wait_text(page, "#caption-table", "a blue square")
    assert "a green square" in page.inner_text("#caption-table")
    # The README's Caption screenshot: the starter captioning its example pictures and clips.
    pick_model(page, "starter")
    page.click("#caption-files button[aria-label=Clear]")
    shown = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".mp4"))[:5]
    page.set_input_files("#caption-files input[type=file]", [str(p) for p in shown])
    wait_text(page, "#caption-files", shown[-1].stem)
    page.click("#caption-button")
    wait_text(page, "#caption-table", shown[-1].stem)
    overflow = page.evaluate("() => { const t = document.querySelector('#caption-table table');"
                             " return t.scrollWidth - t.parentElement.clientWidth }")
    assert overflow <= 1, f"the captions run {overflow} px past the table's edge instead of wrapping"
    page.wait_for_timeout(500)  # let the results fade in before the screenshot
    close_toasts(page)
    shoot(page, "caption")
    pick_model(page, "(default)")


def test_fine_tune_shows_a_growing_loss_plot_and_stops(page, app_url, tmp_path):
    _, squares = app_url
    archive = tmp_path / "squares.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(squares.iterdir()):
            zf.write(f, f"squares/{f.name}")
    open_tab(page, "Fine-tune")
    page.set_input_files("#dataset-file input[type=file]", str(archive))
    wait_text(page, "#dataset-file", "squares")
    # The tiny config goes into the YAML editor; leaving the editor fills the form from it.
    import yaml

    config = tiny_caption_config(None, video=False, epochs=500, eval_every=4)
    config["data"]["validation_fraction"] = 0.25
    text = yaml.safe_dump(config)
    page.click("#config-yaml .cm-content")
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)
    page.click("#field-training_max_steps input")  # blur the editor
    page.wait_for_function("() => document.querySelector('#field-training_epochs input').value === '500'")
    page.fill("#field-training_max_steps input", "")
    assert page.is_disabled("#stop-finetune")  # nothing to stop yet
    page.click("#start-finetune")

    plot = page.locator("#loss-plot")
    page.wait_for_selector("#job-phase[data-phase=training]")
    page.wait_for_function("() => +document.querySelector('#job-phase').dataset.step >= 2")
    page.wait_for_timeout(1500)  # one more poll so the plot holds the points
    first = plot.screenshot()
    step = int(page.get_attribute("#job-phase", "data-step"))
    page.wait_for_function(f"() => +document.querySelector('#job-phase').dataset.step >= {step + 4}")
    page.wait_for_timeout(1500)
    assert plot.screenshot() != first, "the loss plot did not change while training"
    shoot(page, "finetune")

    page.click("#stop-finetune")
    page.wait_for_selector("#job-phase[data-phase=stopped]")
    stopped_at = int(page.get_attribute("#job-phase", "data-step"))
    assert stopped_at < 2000  # 500 epochs of one batch: it ended because of Stop
    page.wait_for_selector("#use-model", state="visible")
    assert page.is_disabled("#stop-finetune")
    ticks = plot_texts(page, "role-axis-label")
    assert ticks and all(t.lstrip("-").isdigit() for t in ticks[:len(ticks) // 2]), \
        f"the step axis has fractional ticks: {ticks}"


PLOT_TEXTS = """(role) => [...document.querySelectorAll('#loss-plot svg g.' + role + ' text')]
  .map(t => t.textContent)"""


def plot_texts(page, role: str) -> list[str]:
    """The texts of the loss plot's SVG group ``role`` (``role-axis-label``: the x ticks, then the y ticks)."""
    return page.evaluate(PLOT_TEXTS, role)


def start_tiny_run(page, **training) -> None:
    """Put a tiny captioning config in the YAML editor and start it (the dataset stays uploaded)."""
    import yaml

    config = tiny_caption_config(None, video=False, **training)
    config["data"]["validation_fraction"] = 0.25
    page.click("#config-yaml .cm-content")
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(yaml.safe_dump(config))
    page.click("#field-training_max_steps input")  # blur the editor: the form follows the YAML
    page.wait_for_function("(n) => document.querySelector('#field-training_max_steps input').value === n",
                           arg=str(training.get("max_steps", "")))
    page.click("#start-finetune")


def test_a_single_validation_point_is_drawn(page, app_url):
    """A run of three steps validates once, at its end: that one point is drawn (a line of one point
    is invisible), beside the three training-loss points."""
    open_tab(page, "Fine-tune")
    start_tiny_run(page, max_steps=3, eval_every=3)
    page.wait_for_selector("#job-phase[data-phase=done]")
    page.wait_for_timeout(1500)  # the last poll's plot
    dots = page.evaluate("() => document.querySelectorAll('#loss-plot svg g.mark-symbol.role-mark path').length")
    assert dots == 4, f"{dots} points drawn, not 3 training + 1 validation"
    assert plot_texts(page, "role-axis-label")[:4] == ["0", "1", "2", "3"]


def test_plugins_tab_lists_the_encoders(page):
    open_tab(page, "Plugins")
    wait_text(page, "#plugins-table", "image/timm")
    assert "video/decord" in page.inner_text("#plugins-table")
    shoot(page, "plugins")


def test_the_page_made_no_outside_requests(page, app_url):
    url, _ = app_url
    outside = [u for u in page.requests if not u.startswith((url, "data:", "blob:"))]
    assert not outside, f"requests left the machine: {outside[:5]}"


def test_use_the_fine_tuned_model_in_chat(page, app_url):
    _, squares = app_url
    open_tab(page, "Fine-tune")
    page.click("#use-model")
    page.wait_for_selector("#chat-input textarea", state="visible")
    value = page.input_value("#model-picker input")
    assert "caption-" in value, value
