"""Dynamic batching for serving: requests that arrive together are generated together, one forward pass per
step for all of them, each streamed back as its own text.

A worker thread per model takes the first waiting request, waits a few milliseconds for more
(``window_s``), and generates the requests whose sampling settings agree as one left-padded batch
(:func:`mmassist.core.runtime.generate.generate_ids`). Each row keeps its own stop strings and token limit;
the batch ends when every row has ended. Requests that arrive meanwhile wait for the next batch, in a
bounded queue (:class:`QueueFullError` when it is full). A request whose media cannot be decoded fails
alone: the batch is preprocessed again without it.

    scheduler = BatchScheduler(assistant)
    request = scheduler.submit(encoded, generation_config)
    for event in request.events():          # ("delta", text) ... then ("done", finish_reason)
        ...
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from mmassist.core.errors import MMAssistError
from mmassist.core.runtime.assistant import autocast
from mmassist.core.runtime.config import GenerationConfig
from mmassist.core.runtime.generate import cut_at_stop, generate_ids, held_back
from mmassist.core.runtime.processor import Encoded


class QueueFullError(MMAssistError):
    """The server has more requests waiting than it accepts; try again later."""


@dataclass
class GenerationRequest:
    """One prompt being answered: its events arrive on a queue as the worker generates."""

    encoded: Encoded
    gen: GenerationConfig
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    _events: queue.Queue = field(default_factory=queue.Queue, repr=False)

    def events(self, timeout: float | None = None) -> Iterator[tuple]:
        """``("delta", text)`` pieces, then ``("done", finish_reason)`` or ``("error", exception)``."""
        while True:
            event = self._events.get(timeout=timeout)
            yield event
            if event[0] in ("done", "error"):
                return

    def result(self, timeout: float | None = None) -> str:
        """The whole answer (raises the request's error)."""
        pieces = []
        for event in self.events(timeout):
            if event[0] == "delta":
                pieces.append(event[1])
            elif event[0] == "error":
                raise event[1]
        return "".join(pieces)


def sampling_key(gen: GenerationConfig) -> tuple:
    """Requests with equal keys can share a batch: greedy ones all do; sampled ones with the same settings
    do, unless seeded (a seed must not depend on what else is in the batch)."""
    if gen.temperature == 0.0:
        return ("greedy", gen.repetition_penalty, gen.no_repeat_ngram_size)
    return ("sample", gen.temperature, gen.top_p, gen.top_k, gen.repetition_penalty, gen.no_repeat_ngram_size,
            gen.seed, id(gen) if gen.seed is not None else None)


class _Row:
    """A request's decoding state inside a batch."""

    def __init__(self, request: GenerationRequest, tokenizer, eos_ids: Sequence[int]):
        self.request, self.tokenizer, self.eos_ids = request, tokenizer, set(eos_ids)
        self.tokens: list[int] = []
        self.emitted = 0
        self.done = False

    def push(self, token: int) -> None:
        gen = self.request.gen
        if token in self.eos_ids:
            return self.finish("stop")
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, gen.stop)
        if stopped:
            self._emit(text[self.emitted:])
            return self.finish("stop", final=False)
        if len(self.tokens) >= gen.max_new_tokens:
            return self.finish("length")
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return None
        safe = len(text) - held_back(text, gen.stop)
        if safe > self.emitted:
            self._emit(text[self.emitted:safe])
            self.emitted = safe
        return None

    def _emit(self, text: str) -> None:
        if text:
            self.request._events.put(("delta", text))

    def finish(self, reason: str, final: bool = True) -> None:
        if self.done:
            return
        if final:  # what was held back (a possible start of a stop string) is part of the answer after all
            text = cut_at_stop(self.tokenizer.decode(self.tokens, skip_special_tokens=True), self.request.gen.stop)[0]
            self._emit(text[self.emitted:])
        self.done = True
        self.request.completion_tokens = len(self.tokens)
        self.request.finish_reason = reason
        self.request._events.put(("done", reason))


class BatchScheduler:
    """A worker thread that answers the requests of one :class:`mmassist.core.Assistant` in batches.

    :param max_batch: most requests generated together.
    :param max_queue: most requests waiting (beyond it :meth:`submit` raises :class:`QueueFullError`).
    :param window_s: how long the worker waits for more requests after the first before it starts a batch.
    """

    def __init__(self, assistant, *, max_batch: int = 16, max_queue: int = 64, window_s: float = 0.01):
        self.assistant = assistant
        self.max_batch, self.window_s = max_batch, window_s
        self._queue: queue.Queue[GenerationRequest | None] = queue.Queue(maxsize=max_queue)
        self.batches: list[int] = []  # the size of every batch run, for tests and benchmarks
        self._thread = threading.Thread(target=self._work, name="mmassist-batcher", daemon=True)
        self._thread.start()

    def submit(self, encoded: Encoded, gen: GenerationConfig) -> GenerationRequest:
        request = GenerationRequest(encoded, gen)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueueFullError(f"the server is busy ({self._queue.maxsize} requests waiting); try again "
                                 "shortly") from None
        return request

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    # -- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        waiting: list[GenerationRequest] = []
        while True:
            if not waiting:
                first = self._queue.get()
                if first is None:
                    return
                waiting.append(first)
                deadline = time.monotonic() + self.window_s
                while len(waiting) < self.max_batch:
                    try:
                        more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if more is None:
                        self._queue.put(None)  # stop after this batch
                        break
                    waiting.append(more)
            key = sampling_key(waiting[0].gen)
            batch = [r for r in waiting if sampling_key(r.gen) == key][: self.max_batch]
            waiting = [r for r in waiting if r not in batch]
            try:
                self._generate(batch)
            except Exception as e:  # never let one batch take the worker down
                for r in batch:
                    if r.finish_reason is None:
                        r._events.put(("error", e))

    def _collate(self, batch: list[GenerationRequest]):
        """The batch's model inputs; a request whose media fail to preprocess gets its error and leaves."""
        processor = self.assistant.processor
        try:
            return batch, processor.collate([r.encoded for r in batch], padding_side="left")
        except MMAssistError:
            good = []
            for r in batch:
                try:
                    processor.collate([r.encoded], padding_side="left")
                    good.append(r)
                except MMAssistError as e:
                    r._events.put(("error", e))
            if not good:
                return [], None
            return good, processor.collate([r.encoded for r in good], padding_side="left")

    @torch.no_grad()
    def _generate(self, batch: list[GenerationRequest]) -> None:
        asst = self.assistant
        batch, inputs = self._collate(batch)
        if not batch:
            return
        self.batches.append(len(batch))
        rows = [_Row(r, asst.tokenizer, asst.eos_ids) for r in batch]
        gen = dataclasses.replace(batch[0].gen, stop=[], max_new_tokens=max(r.gen.max_new_tokens for r in batch))

        def prompt_lengths(lengths: torch.Tensor) -> None:
            for r, n in zip(batch, lengths.tolist()):
                r.prompt_tokens = int(n)

        steps = generate_ids(asst.model, inputs.to(asst.device), gen, eos_ids=asst.eos_ids,
                             banned_ids=asst.banned_ids, on_prompt=prompt_lengths)
        with autocast(asst.device, asst.dtype):
            for token in steps:
                for row, t in zip(rows, token.tolist()):
                    if not row.done:
                        row.push(int(t))
                if all(row.done for row in rows):
                    break
        for row in rows:  # the generator ended: every row's tokens are in
            row.finish("length" if len(row.tokens) >= row.request.gen.max_new_tokens else "stop")


def usage(requests: Sequence[GenerationRequest]) -> dict[str, Any]:
    prompt = sum(r.prompt_tokens for r in requests)
    completion = sum(r.completion_tokens for r in requests)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
