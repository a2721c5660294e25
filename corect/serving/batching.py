"""Micro-batching: the utterances that conversations send at about the same moment go
through the model together.

Every utterance goes into one queue. One worker takes the first waiting, then
more until it holds `max_batch` or `wait_s` has passed since the first, and deals the
batch out to `workers` model threads (an executor, so the event loop keeps serving while
torch works). Each thread takes a share of the batch's conversations, sorted by text
length and dealt in turn so that the shares cost alike: it encodes its texts with the
text encoder (the dominant cost) packed without padding
(:data:`~corect.inference.recognizer.TEXT_PACK_TOKENS` tokens per call; on MELD about
1.4 times as fast as padded groups of 16 length-sorted texts), then steps each of its
utterances' conversation states.
Threads share the model and the text encoder (the tokenizer runs under a lock; the
weights are only read) and never a conversation. On CPU each thread runs torch on its
own cores (``torch.set_num_threads(cpus // workers)``): on 2 cores two threads of one
torch thread each encode about 1.6 times as many MELD texts per second as one thread
of two (small matrices split badly across cores; measured in docs/realtime.md).
While a batch runs, the next one gathers, so batches grow with the load. The service
keeps one utterance per conversation in flight
(:class:`~corect.serving.sessions.Conversation`), so a batch never holds two of one
conversation and a conversation's replies come in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from corect.common.errors import InputError
from corect.inference.recognizer import DialogueState, Prediction, StreamingRecognizer
from corect.serving.messages import MessageError, Utterance


@dataclass
class Job:
    """One utterance of one conversation, and the future its reply completes."""

    state: DialogueState
    utterance: Utterance
    future: asyncio.Future
    text_vector: torch.Tensor | None = None
    error: Exception | None = None


@dataclass
class BatchStats:
    """How the batches went: their number, the utterances, the largest batch."""

    batches: int = 0
    utterances: int = 0
    largest: int = 0
    texts_encoded: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many

    def add(self, size: int, texts: int) -> None:
        self.batches += 1
        self.utterances += size
        self.largest = max(self.largest, size)
        self.texts_encoded += texts
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def summary(self) -> dict[str, Any]:
        mean = self.utterances / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "utterances": self.utterances,
            "largest": self.largest,
            "mean": round(mean, 2),
            "texts_encoded": self.texts_encoded,
        }


class MicroBatcher:
    """Batches utterances across conversations for `recognizer` (see the module)."""

    def __init__(
        self,
        recognizer: StreamingRecognizer,
        *,
        max_batch: int = 64,
        wait_s: float = 0.005,
        workers: int = 1,
        text_error: str | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers: {workers}, expected at least 1")
        self.recognizer = recognizer
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.workers = workers
        self.text_error = text_error  # why texts cannot be encoded (None: they can)
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="corect-model")
        self._pending: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the worker on the running event loop (again if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._worker is not None and not self._worker.done():
            return
        self._loop, self._arrived = loop, asyncio.Event()
        self._worker = loop.create_task(self._work(), name="corect-micro-batcher")

    async def stop(self) -> None:
        """Stop the worker (utterances still waiting get an error)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(MessageError("the service is stopping", status=503))
        self._worker = None

    async def submit(self, state: DialogueState, utterance: Utterance) -> Prediction:
        """The prediction for the next utterance of the conversation with `state`."""
        self.start()
        future = asyncio.get_running_loop().create_future()
        self._pending.append(Job(state, utterance, future))
        self._arrived.set()
        return await future

    async def _next_batch(self) -> list[Job]:
        """Wait for an utterance, then for more until `max_batch` or `wait_s` after it."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.monotonic() + self.wait_s
        while len(self._pending) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]

    async def _work(self) -> None:
        """Forever: gather a batch, run its shares on the model threads, complete its
        futures."""
        assert self._loop is not None
        while True:
            batch = await self._next_batch()
            shares = self.shares(batch)
            runs = [self._loop.run_in_executor(self.executor, self.run_batch, s) for s in shares]
            done = await asyncio.gather(*runs, return_exceptions=True)
            texts = 0
            for share, results in zip(shares, done, strict=True):
                if isinstance(results, BaseException):  # the worker must outlive any batch
                    results = [results] * len(share)
                for job, result in zip(share, results, strict=True):
                    texts += job.text_vector is not None
                    if job.future.done():  # the client went away
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
            self.stats.add(len(batch), texts)

    def shares(self, batch: Sequence[Job]) -> list[list[Job]]:
        """The batch dealt out to the model threads: sorted by text length, then in turn,
        so that every share holds texts of every length (and costs about the same)."""
        order = sorted(batch, key=lambda job: len(job.utterance.text or ""))
        shares = [order[w :: self.workers] for w in range(min(self.workers, len(batch)))]
        return [share for share in shares if share]

    @torch.inference_mode()
    def run_batch(self, batch: Sequence[Job]) -> list[Prediction | Exception]:
        """In a model thread: the batch's texts in few encoder calls, then each
        utterance's step, in order; an utterance that fails gets its error."""
        for job in batch:  # a speaker beyond the model's slots: refused before anything
            try:
                self.recognizer.party(job.state, job.utterance.speaker)
            except InputError as err:
                job.error = MessageError(str(err), field="speaker")
        self.encode_texts(batch)
        results: list[Prediction | Exception] = []
        for job in batch:
            if job.error is not None:
                results.append(job.error)
                continue
            u = job.utterance
            features: dict[str, Any] = dict(u.features)
            if job.text_vector is not None:
                features["t"] = job.text_vector
            try:
                results.append(self.recognizer.push(u.speaker, features, u.text, state=job.state))
            except InputError as err:
                results.append(MessageError(str(err), field="message"))
        return results

    def encode_texts(self, batch: Sequence[Job]) -> None:
        """Set each job's text vector (those that need one) from one text-encoder call
        (packed without padding). A job whose text cannot be encoded gets its error."""
        if "t" not in self.recognizer.dims:
            return
        inputs, jobs = [], []
        for job in batch:
            if job.error is not None or "t" in job.utterance.features:
                continue
            if self.text_error is not None:
                job.error = MessageError(f"text: {self.text_error}", field="text")
                continue
            u = job.utterance
            try:
                inputs.append(self.recognizer.text_input(job.state, u.speaker, u.text or ""))
                jobs.append(job)
            except InputError as err:
                job.error = MessageError(str(err), field="text")
        if inputs:
            vectors = torch.from_numpy(self.recognizer.text_encoder.encode(inputs))
            for job, vector in zip(jobs, vectors, strict=True):
                job.text_vector = vector
