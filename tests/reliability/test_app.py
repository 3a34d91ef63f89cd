"""The web app, launched in this process on a free local port with the tiny untrained model:
bad input keeps it serving, it serves no file outside its upload and output folders, it binds to
127.0.0.1, logs users in when asked, limits uploads, and stays correct and bounded under load.

Requests go over HTTP, through gradio_client (as a script would) or through Gradio's plain
``/gradio_api/call/<api>`` endpoints (cheaper per request, for the load tests).
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
from pathlib import Path
from typing import Any

import pytest

from mmassist.ui.testing import serve

from .helpers import rss_mb

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")
from gradio_client import Client, handle_file  # noqa: E402

UPLOAD_LIMIT_MB = 1
MAX_QUEUE = 64


@pytest.fixture(scope="module")
def app(checkpoint, host, tmp_path_factory):
    from mmassist.ui.app import build_app

    return build_app(str(checkpoint), host=host, upload_limit_mb=UPLOAD_LIMIT_MB,
                     runs_dir=tmp_path_factory.mktemp("runs"), max_queue=MAX_QUEUE)


@pytest.fixture(scope="module")
def url(app):
    with serve(app) as address:
        yield address


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)


def call(url: str, api: str, data: list[Any], timeout: float = 300, **client: Any) -> tuple[str, Any]:
    """One request to ``/gradio_api/call/<api>``: ("complete", outputs) or ("error", details)."""
    with httpx.Client(timeout=timeout, **client) as http:
        reply = http.post(f"{url}gradio_api/call/{api}", json={"data": data})
        reply.raise_for_status()
        event_id = reply.json()["event_id"]
        event = None
        with http.stream("GET", f"{url}gradio_api/call/{api}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    return event, json.loads(line.split(":", 1)[1])
    raise AssertionError(f"the stream of {api} ended without a result")


def chat_data(text: str, max_new_tokens: int = 8) -> list[Any]:
    """/chat's inputs: message, model ("" = the default), temperature, top_p, max_new_tokens, history."""
    return [{"text": text, "files": []}, "", 0.0, 1.0, max_new_tokens, []]


def app_error(action) -> str:
    with pytest.raises(Exception) as info:
        action()
    return str(info.value)


# -- bad input --------------------------------------------------------------------------------------

# file name -> words the error shown in the page must hold
UI_CASES = {
    "empty.png": ["empty"],
    "truncated.png": ["truncated.png", "give a valid PNG"],
    "notes.png": ["notes.png", "as an image"],
    "bomb.png": ["bomb.png", "decompression bomb"],
    "large.png": ["large.png", "over the limit"],
    "truncated.mp4": ["truncated.mp4", "give a valid MP4"],
    "zero_frames.mp4": ["zero_frames.mp4", "give a valid MP4"],
    "unknown_codec.mkv": ["unknown_codec.mkv", "give a valid MP4"],
    "report.pdf": ["file type"],  # refused at upload: the page accepts only the plugins' types
}


@pytest.mark.parametrize("name", list(UI_CASES))
def test_a_bad_file_in_chat_and_caption_is_a_readable_error_and_the_app_keeps_serving(client, media, name):
    def chat():
        client.reset_session()
        return client.predict({"text": "Describe.", "files": [handle_file(str(media[name]))]}, "", 0.0, 1.0, 4,
                              api_name="/chat")

    for action in (chat, lambda: client.predict([handle_file(str(media[name]))], "", api_name="/caption")):
        message = app_error(action)
        for word in UI_CASES[name]:
            assert word.lower() in message.lower(), message
        assert "Traceback" not in message and "/gradio/" not in message, message
    table, _ = client.predict([handle_file(str(media["red.png"]))], "", api_name="/caption")
    assert table["data"][0][0] == "red.png" and table["data"][0][1]  # still serving


def test_a_caption_batch_with_one_bad_file_reports_it_in_its_row(client, media):
    table, downloads = client.predict([handle_file(str(media[n])) for n in ("red.png", "notes.png", "clip.mp4")], "",
                                      api_name="/caption")
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert rows["red.png"]["caption"] and rows["clip.mp4"]["caption"]
    assert not rows["red.png"]["caption"].startswith("⚠") and not rows["clip.mp4"]["caption"].startswith("⚠")
    bad = rows["notes.png"]["caption"]  # the failed file says why in its own cell
    assert bad.startswith("⚠ not captioned:") and "as an image" in bad, bad
    assert len(downloads) == 2
    exported = {r["file"]: r for r in map(json.loads, next(Path(p) for p in downloads if p.endswith(".jsonl"))
                                          .read_text(encoding="utf-8").splitlines())}
    assert exported["notes.png"]["caption"] == "" and "as an image" in exported["notes.png"]["error"]


def test_a_100k_character_prompt_is_refused_with_a_clear_error(url):
    event, details = call(url, "chat", chat_data("why " * 25_000))
    assert event == "error", details
    assert "over decoder.max_length=256" in details["error"] and "shorten it" in details["error"]
    assert call(url, "chat", chat_data("hello"))[0] == "complete"


def test_a_missing_model_or_plugin_is_a_readable_error(url, checkpoint, tmp_path):
    event, details = call(url, "chat", [{"text": "hi", "files": []}, str(tmp_path / "nowhere"), 0.0, 1.0, 4, []])
    assert event == "error" and "not a folder" in details["error"], details
    broken = tmp_path / "model"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["encoders"]["image"].update(name="image/fancy", distribution="mmassist-fancy")
    (broken / "manifest.json").write_text(json.dumps(manifest))
    event, details = call(url, "chat", [{"text": "hi", "files": []}, str(broken), 0.0, 1.0, 4, []])
    assert event == "error" and "pip install mmassist-fancy" in details["error"], details
    assert call(url, "chat", chat_data("hello"))[0] == "complete"


# -- security -----------------------------------------------------------------------------------------


def test_the_app_binds_to_this_machine_only_by_default(app, url):
    from mmassist.core.cli import build_parser
    from mmassist.ui.server import launch_options

    assert app.server_name == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    assert launch_options()["server_name"] == "127.0.0.1" and launch_options()["share"] is False
    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"


@pytest.mark.parametrize("target", [
    "/etc/passwd", "%2Fetc%2Fpasswd", "../../../../../../etc/passwd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "CHECKPOINT/config.json", "CHECKPOINT/model.safetensors", "REPO/pyproject.toml", "UPLOADS/../../etc/passwd",
])
def test_no_file_outside_the_upload_and_output_folders_is_served(url, checkpoint, target):
    from gradio.utils import get_upload_folder

    target = (target.replace("CHECKPOINT", str(checkpoint)).replace("REPO", str(Path(__file__).parents[2]))
              .replace("UPLOADS", str(get_upload_folder())))
    for route in ("gradio_api/file=", "file="):
        reply = httpx.get(url + route + target, timeout=30)
        assert reply.status_code in (403, 404), f"{route}{target}: {reply.status_code}"
        assert "root:" not in reply.text and "safetensors" not in reply.headers.get("content-type", "")


def test_an_uploaded_file_is_served_back_so_the_refusals_are_not_a_broken_route(url, media):
    with media["red.png"].open("rb") as f:
        reply = httpx.post(url + "gradio_api/upload", files={"files": ("red.png", f, "image/png")}, timeout=60)
    assert reply.status_code == 200, reply.text
    [path] = reply.json()
    served = httpx.get(url + "gradio_api/file=" + path, timeout=30)
    assert served.status_code == 200 and served.content == media["red.png"].read_bytes()


def test_uploads_over_the_limit_are_refused_by_the_server(url, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (UPLOAD_LIMIT_MB * 2**20 + 10))
    with big.open("rb") as f:
        reply = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert reply.status_code == 413 and "size" in reply.text.lower(), reply.text


def test_the_page_only_accepts_the_plugins_file_types(app):
    shared = app.mmassist
    assert ".png" in shared.media_types and ".mp4" in shared.media_types
    for ext in (".pdf", ".exe", ".html", ".svg", ".py", ".sh", ".txt"):
        assert ext not in shared.media_types, ext


def test_with_auth_nothing_is_served_before_login(checkpoint, host, tmp_path):
    from mmassist.ui.app import build_app

    app = build_app(str(checkpoint), host=host, runs_dir=tmp_path / "runs")
    with serve(app, auth="ann:s3cret") as url:
        assert httpx.get(url + "config", timeout=30).status_code == 401
        reply = httpx.post(url + "gradio_api/call/chat", json={"data": chat_data("hi")}, timeout=30)
        assert reply.status_code == 401
        wrong = httpx.post(url + "login", data={"username": "ann", "password": "guess"}, timeout=30)
        assert wrong.status_code in (400, 401) and "access-token" not in str(wrong.headers)
        with httpx.Client(timeout=60) as http:
            assert http.post(url + "login", data={"username": "ann", "password": "s3cret"}).status_code == 200
            assert http.get(url + "config").status_code == 200
        own = Client(url, auth=("ann", "s3cret"), verbose=False)
        assert isinstance(own.predict({"text": "hi", "files": []}, "", 0.0, 1.0, 2, api_name="/chat"), str)


# -- load ---------------------------------------------------------------------------------------------


def test_32_concurrent_chats_in_a_bounded_queue_all_get_their_own_answer(app, url, assistant):
    assert app._queue.max_size == MAX_QUEUE >= 32, "the queue must be bounded, and hold this load"
    prompts = [f"question number {i}: {'why ' * (i % 5)}" for i in range(32)]
    expected = [assistant.chat(p, max_new_tokens=8) for p in prompts]
    assert len(set(expected)) > 1, "the prompts must not all get the same answer"
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda p: call(url, "chat", chat_data(p)), prompts, timeout=300))
    assert [event for event, _ in results] == ["complete"] * 32, results
    answers = [outputs[0] for _, outputs in results]
    empty = "*(the model gave an empty answer)*"
    assert answers == [e or empty for e in expected]


@pytest.mark.slow
def test_memory_stays_flat_over_300_chat_requests(url):
    if rss_mb() is None:
        pytest.skip("cannot read this process's memory (no /proc and no psutil)")
    for i in range(30):  # warm-up: caches, lazy imports, allocator pools
        assert call(url, "chat", chat_data(f"warm {i}", 2))[0] == "complete"
    gc.collect()
    start = rss_mb()
    readings = []
    for i in range(300):
        event, outputs = call(url, "chat", chat_data(f"request {i} " + "x" * (i % 50), 2))
        assert event == "complete", outputs
        if i % 50 == 49:
            gc.collect()
            readings.append(rss_mb() - start)
    assert max(readings) < 150, f"RSS grew by {readings} MB over 300 requests"
