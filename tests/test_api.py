"""The OpenAI-compatible API (mmassist serve), driven by the real ``openai`` client against a server running
in this process: text, images and videos as data URLs, streaming, errors, 16 concurrent clients, the key."""

from __future__ import annotations

import base64
import concurrent.futures
import json
from pathlib import Path

import pytest

from mmassist import core
from mmassist.core.runtime.serving import BatchScheduler, QueueFullError
from mmassist.ui.api import build_api, error_of
from mmassist.ui.testing import COLOURS, serve_api, tiny_model

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
KEY = "test-key-123"
MODEL = "tiny"


@pytest.fixture(scope="module")
def trained(host, tmp_path_factory):
    return tiny_model(tmp_path_factory.getbasetemp() / "ui-tiny", host=host)


@pytest.fixture(scope="module")
def assistant(trained, host):
    return core.Assistant.from_pretrained(trained[1], host=host)


@pytest.fixture(scope="module")
def media_dir(trained):
    return trained[0]


@pytest.fixture(scope="module")
def app(assistant, media_dir):
    app = build_api({MODEL: assistant}, api_key=KEY, media_dir=media_dir, max_body_mb=1)
    yield app
    app.state.service.close()


@pytest.fixture(scope="module")
def url(app):
    with serve_api(app) as address:
        yield address


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def image_message(path: Path, text: str = "Describe.", kind: str = "image_url", mime: str = "image/png") -> list:
    return [{"role": "user", "content": [{"type": kind, kind: {"url": data_url(path, mime)}},
                                         {"type": "text", "text": text}]}]


def test_models_are_listed(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_a_picture_as_a_data_url_gets_the_right_answer_with_usage(client, media_dir):
    out = client.chat.completions.create(model=MODEL, messages=image_message(media_dir / "red.png"))
    assert out.choices[0].message.content == "a red square"
    assert out.choices[0].finish_reason == "stop" and out.object == "chat.completion"
    assert out.usage.completion_tokens > 0
    assert out.usage.prompt_tokens > 16  # the image's tokens count
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_text_a_local_path_and_a_video(client, media_dir, tmp_path):
    text = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=5)
    assert isinstance(text.choices[0].message.content, str) and text.usage.completion_tokens <= 5
    assert text.choices[0].finish_reason in ("stop", "length")
    local = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "blue.png"}}, {"type": "text", "text": "Describe."}]}])
    assert local.choices[0].message.content == "a blue square"
    import numpy as np

    from mmassist.core.contract.testing import moving_shapes, write_test_video

    clip = write_test_video(tmp_path / "clip.mp4", moving_shapes(8, 32, 32).astype(np.uint8))
    video = client.chat.completions.create(model=MODEL, messages=image_message(clip, kind="video_url",
                                                                               mime="video/mp4"), max_tokens=8)
    assert isinstance(video.choices[0].message.content, str) and video.usage.prompt_tokens > 0


def test_length_stop_and_seeded_sampling(client, media_dir):
    cut = client.chat.completions.create(model=MODEL, messages=image_message(media_dir / "red.png"), max_tokens=3)
    assert cut.choices[0].message.content == "a r" and cut.choices[0].finish_reason == "length"
    stopped = client.chat.completions.create(model=MODEL, messages=image_message(media_dir / "red.png"), stop=[" sq"])
    assert stopped.choices[0].message.content == "a red" and stopped.choices[0].finish_reason == "stop"
    runs = [client.chat.completions.create(model=MODEL, messages=image_message(media_dir / "red.png"),
                                           temperature=1.5, seed=7).choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]


def test_streaming_gives_the_same_answer_ending_in_done(client, url, media_dir):
    stream = client.chat.completions.create(model=MODEL, messages=image_message(media_dir / "green.png"),
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a green square"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    raw = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                     json={"model": MODEL, "messages": image_message(media_dir / "green.png"), "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def errors(call) -> "openai.APIStatusError":
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


def test_bad_requests_are_openai_shaped_errors_and_the_server_keeps_serving(client, url, media_dir, tmp_path):
    def ask(**kw):
        return lambda: client.chat.completions.create(**{"model": MODEL, "messages": image_message(
            media_dir / "red.png"), **kw})

    e = errors(ask(model="gpt-4"))
    assert e.status_code == 404 and e.body["code"] == "model_not_found" and "tiny" in e.body["message"]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((media_dir / "red.png").read_bytes()[:40])
    e = errors(ask(messages=image_message(corrupt)))
    assert e.status_code == 400 and "image" in e.body["message"]
    e = errors(ask(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}]}]))
    assert e.status_code == 400 and "empty" in e.body["message"]
    e = errors(ask(n=2))
    assert e.status_code == 400 and e.body["param"] == "n"
    e = errors(ask(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]))
    assert e.status_code == 400 and e.body["param"] == "tools"
    e = errors(ask(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "https://example.com/cat.png"}}]}]))
    assert e.status_code == 400 and e.body["code"] == "remote_url"
    e = errors(ask(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "../x.png"}}]}]))
    assert e.status_code == 400 and "outside the allowed media folder" in e.body["message"]
    e = errors(ask(messages=[{"role": "user", "content": "words " * 400}]))
    assert e.status_code == 400 and e.body["code"] == "context_length_exceeded"
    e = errors(ask(temperature=5))
    assert e.status_code == 400 and e.body["param"] == "temperature"
    big = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                     content=b"{" + b" " * (2 * 1024 * 1024) + b"}", timeout=60)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    bad_json = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          content=b"{not json", timeout=60)
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    assert ask()().choices[0].message.content == "a red square"  # still serving


def test_the_api_key_is_required(url):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key=key or "x", max_retries=0)
        e = errors(lambda: bad.models.list())
        assert e.status_code == 401 and e.body["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models").status_code == 401


def test_sixteen_concurrent_clients_are_batched_and_each_gets_its_answer(client, app, media_dir):
    scheduler = app.state.service.models[MODEL].scheduler
    before = len(scheduler.batches)
    colours = [list(COLOURS)[i % 4] for i in range(16)]

    def one(i: int) -> tuple[str, str]:
        messages = image_message(media_dir / f"{colours[i]}.png")
        if i % 2:  # half of them stream
            stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
            return colours[i], "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return colours[i], client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    assert all(answer == f"a {colour} square" for colour, answer in answers), answers
    batches = scheduler.batches[before:]
    assert sum(batches) == 16 and max(batches) > 1, batches  # generated together, not one at a time


def test_a_full_queue_is_refused_with_503(assistant):
    scheduler = BatchScheduler(assistant, max_queue=2)
    scheduler.close()  # no worker: whatever is submitted waits
    encoded = assistant.processor.encode(assistant.processor.conversation("Hi"), add_generation_prompt=True)
    scheduler.submit(encoded, assistant.cfg.generation)
    scheduler.submit(encoded, assistant.cfg.generation)
    with pytest.raises(QueueFullError) as info:
        scheduler.submit(encoded, assistant.cfg.generation)
    error = error_of(info.value)
    assert error.status == 503 and error.body()["error"]["code"] == "queue_full"


def test_the_web_app_serves_the_api_on_its_own_model(trained, host, capsys):
    from mmassist.ui.server import launch

    app = launch(str(trained[1]), port=None, block=False, api=True, api_key=KEY,
                 runs_dir=trained[0].parent / "runs")
    try:
        base = app.local_url.rstrip("/")
        printed = capsys.readouterr().out
        assert f"mmassist web app at {app.local_url}" in printed
        assert "share=True" not in printed, printed  # Gradio's banner offers a tunnel mmassist does not have
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
        [model] = [m.id for m in client.models.list().data]
        out = client.chat.completions.create(model=model, messages=image_message(trained[0] / "yellow.png"))
        assert out.choices[0].message.content == "a yellow square"
        # one copy in memory: the API answers with the model the app's tabs use
        assert app.api_service.models[model].assistant is app.shared.store.get(None).assistant
    finally:
        app.close()


def test_mmassist_serve_answers_the_readmes_curl(trained, tmp_path):
    """The command line server, called with curl as the README shows."""
    import os
    import subprocess
    import sys
    import time

    from mmassist.ui.testing import free_port

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "mmassist.core", "serve", "--model", str(trained[1]),
                               "--port", str(port), "--api-key", KEY], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                             timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        picture = base64.b64encode((trained[0] / "red.png").read_bytes()).decode()
        request = {"model": str(trained[1]), "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{picture}"}},
            {"type": "text", "text": "Describe."}]}]}
        (tmp_path / "request.json").write_text(json.dumps(request))
        done = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/v1/chat/completions",
                               "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
                               "-d", f"@{tmp_path / 'request.json'}"], capture_output=True, text=True, timeout=60)
        assert json.loads(done.stdout)["choices"][0]["message"]["content"] == "a red square", done.stdout
    finally:
        server.terminate()
        server.wait(timeout=20)
