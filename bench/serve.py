"""Serving: tokens per second of the OpenAI-compatible API with 8 concurrent clients over 1 client, the same
server and model in the same run (``serve_throughput_8_vs_1``; issue 25's target: >= 2.5 on a 2-core CPU).

The server is :func:`mmassist.ui.api.build_api` under uvicorn in this process; the clients are threads
posting ``/v1/chat/completions`` with httpx (half of the concurrent ones stream). Every request asks about one
picture and gets exactly ``new_tokens`` tokens (the model's end-of-turn ids are set to one that never occurs),
so tokens per second is ``requests x new_tokens / wall time``. The answers streamed under load must equal the
ones answered alone.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import time

from bench.common import Section, log, ratio
from bench.generate import FULL, QUICK, build
from bench.models import images


def _data_url(picture) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run(quick: bool = False) -> Section:
    import httpx

    from mmassist.ui.api import build_api
    from mmassist.ui.testing import serve_api

    s = QUICK if quick else FULL
    section = Section("serve", "Serving: API tokens/s with 8 concurrent clients vs 1 (dynamic batching)")
    log("serve: building the model")
    asst = build(s)
    n = s.new_tokens
    pictures = [_data_url(p) for p in images(8, s.image_size, seed=5)]
    app = build_api({"bench": asst})

    def body(i: int, stream: bool = False) -> dict:
        return {"model": "bench", "max_tokens": n, "stream": stream, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": pictures[i % 8]}},
            {"type": "text", "text": "What is in this picture?"}]}]}

    with serve_api(app) as url, httpx.Client(base_url=url, timeout=600) as http:
        def ask(i: int, stream: bool = False) -> str:
            if not stream:
                out = http.post("/v1/chat/completions", json=body(i)).json()
                return out["choices"][0]["message"]["content"]
            text = []
            with http.stream("POST", "/v1/chat/completions", json=body(i, True)) as response:
                for line in response.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        delta = json.loads(line[6:])["choices"]
                        text.append(delta[0]["delta"].get("content") or "" if delta else "")
            return "".join(text)

        ask(0)  # warm-up
        per_client = 1 if quick else 2
        alone_n = 2 if quick else 4
        log(f"serve: 1 client, {alone_n} requests of {n} tokens")
        start = time.perf_counter()
        alone = [ask(i) for i in range(alone_n)]
        t1 = time.perf_counter() - start
        log(f"serve: 8 concurrent clients, {8 * per_client} requests")
        scheduler = app.state.service.models["bench"].scheduler
        before = len(scheduler.batches)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            loaded = list(pool.map(lambda i: ask(i % alone_n, stream=i % 2 == 1), range(8 * per_client)))
        t8 = time.perf_counter() - start
        batches = scheduler.batches[before:]
    app.state.service.close()
    tput1, tput8 = alone_n * n / t1, 8 * per_client * n / t8
    same = all(loaded[i] == alone[i % alone_n] for i in range(len(loaded)))
    section.row(clients=1, requests=alone_n, **{"tokens/s": tput1, "s": t1})
    section.row(clients=8, requests=8 * per_client, **{"tokens/s": tput8, "s": t8,
                                                         "mean batch": sum(batches) / max(1, len(batches))})
    section.keys["serve_throughput_8_vs_1"] = ratio(tput8, tput1)
    section.note(f"decoder Llama {s.decoder['hidden_size']}x{s.decoder['num_hidden_layers']}, {s.image_model} at "
                 f"{s.image_size}px, {n} new tokens a request; batches {batches}; streamed answers under load "
                 f"equal the ones answered alone: {same}")
    return section
