"""GPT (text-to-semantic) stage with continuous batching.

One decode loop per replica owns a `T2SEngine` (a preallocated pool of KV-cache slots). Requests
join the running batch at the next step after their prefill and leave when they stop, each with
its own sampling parameters, seed and stop rule. Tokens go back to each caller through its own
queue, so `generate_stream` can relay chunks while decoding continues. Admission control: at most
`max_batch` rows decode at once; further requests wait in a bounded queue, and past
`max_queued` they are refused at once (the ingress answers 503) instead of piling up.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import numpy as np
import torch
from ray import serve

from deployments.common import StageError, limit_threads, resolve_device, torch_dtype
from models.pipeline import ModelPaths, TextFeatures, VoicePrompt, t2s_inputs
from models.t2s import GenerationResult, SamplingParams, T2SEngine, Text2Semantic, upstream_sovits_codes

log = logging.getLogger("gsv.gpt")


@dataclass
class _Active:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    tokens: list[int] = field(default_factory=list)


@serve.deployment(name="GPT", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class GPTDeployment:
    def __init__(self, paths: ModelPaths, device: str = "cpu", dtype: str = "float32",
                 num_threads: int | None = None, max_batch: int = 8, max_seq: int = 2560,
                 max_queued: int = 256):
        limit_threads(num_threads)
        device = resolve_device(device)
        self.model_version = paths.version()
        self.model = Text2Semantic.from_checkpoint(paths.gpt, device=device, dtype=torch_dtype(dtype))
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.engine = T2SEngine(self.model, max_batch=max_batch, max_seq=max_seq)
        self.waiting: asyncio.Queue = asyncio.Queue()
        self.active: dict[int, _Active] = {}
        self.ids = itertools.count()
        self.loop_task: asyncio.Task | None = None
        self.to_cancel: list[int] = []  # applied by the loop between steps (the engine is not thread-safe)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_queued = int(config.get("max_queued", self.max_queued))

    def check_health(self) -> None:
        if self.loop_task is not None and self.loop_task.done() and self.loop_task.exception():
            raise RuntimeError(f"decode loop died: {self.loop_task.exception()!r}")

    # ------------------------------------------------------------------------- public methods
    async def generate(self, prompt: VoicePrompt, target: TextFeatures, params: SamplingParams) -> np.ndarray | StageError:
        """All tokens of one sentence, as upstream hands them to SoVITS."""
        tokens: list[int] = []
        reason = "eos"
        async for chunk, stop_reason in self._decode(prompt, target, params):
            if isinstance(chunk, StageError):
                return chunk
            tokens.extend(chunk)
            reason = stop_reason or reason
        result = GenerationResult(torch.tensor(tokens, dtype=torch.long), reason, len(prompt.prompt_tokens))
        return upstream_sovits_codes(result).numpy()

    async def generate_stream(self, prompt: VoicePrompt, target: TextFeatures, params: SamplingParams,
                              first_chunk: int, chunk: int) -> AsyncIterator[np.ndarray | StageError]:
        """Tokens in chunks as they are decoded: `first_chunk` tokens first (time to first audio),
        then `chunk` at a time; the last chunk may be shorter."""
        buffer: list[int] = []
        target_size = first_chunk
        async for tokens, stop_reason in self._decode(prompt, target, params):
            if isinstance(tokens, StageError):
                yield tokens
                return
            buffer.extend(tokens)
            if stop_reason is not None or len(buffer) >= target_size:
                if buffer or stop_reason is not None:
                    yield np.asarray(buffer, dtype=np.int64)
                buffer, target_size = [], chunk

    def stats(self) -> dict[str, int]:
        return {"active": len(self.active), "waiting": self.waiting.qsize()}

    # ------------------------------------------------------------------------- decode loop
    async def _decode(self, prompt: VoicePrompt, target: TextFeatures, params: SamplingParams):
        if self.waiting.qsize() >= self.max_queued:
            yield StageError("overloaded", "the GPT stage queue is full; retry shortly", 503), None
            return
        request_id = next(self.ids)
        state = _Active()
        self.active[request_id] = state
        phones, bert = t2s_inputs(prompt, target)
        await self.waiting.put((request_id, phones, bert, prompt.prompt_tokens, params))
        self._ensure_loop()
        finished = False
        try:
            while True:
                tokens, stop_reason = await state.queue.get()
                if isinstance(tokens, BaseException):
                    raise tokens
                yield tokens, stop_reason
                if stop_reason is not None:
                    finished = True
                    return
        finally:
            self.active.pop(request_id, None)
            if not finished:  # the caller went away (disconnect): stop decoding this row
                self.to_cancel.append(request_id)

    def _ensure_loop(self) -> None:
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        try:
            await self._decode_steps()
        except BaseException as exc:  # a broken loop must fail its requests, never strand them
            log.exception("decode loop failed")
            for state in self.active.values():
                state.queue.put_nowait((exc, None))
            raise

    async def _decode_steps(self) -> None:
        while True:
            while self.to_cancel:
                self.engine.cancel(self.to_cancel.pop())
            admitted = []
            while self.engine.free_slots > 0 and not self.waiting.empty():
                admitted.append(self.waiting.get_nowait())
            if admitted:
                for request_id, error in await asyncio.to_thread(self._admit, admitted):
                    if request_id in self.active:
                        self.active[request_id].queue.put_nowait(error)
            if self.engine.num_active == 0:
                if self.waiting.empty():
                    return
                continue
            outputs = await asyncio.to_thread(self.engine.step)
            for out in outputs:
                state = self.active.get(out.request_id)
                if state is None:
                    continue
                token = [] if out.token is None else [int(out.token)]
                state.queue.put_nowait((token, out.reason if out.finished else None))

    def _admit(self, admitted: list[tuple]) -> list[tuple[int, tuple]]:
        """Prefill new requests (worker thread). Returns per-request failures for the loop to deliver:
        asyncio queues must only be touched from the event loop thread."""
        failures = []
        for request_id, phones, bert, prompt_tokens, params in admitted:
            if request_id not in self.active:
                continue  # cancelled while waiting
            try:
                self.engine.add(request_id, torch.from_numpy(phones), torch.from_numpy(bert),
                                torch.from_numpy(prompt_tokens), params)
            except ValueError as exc:  # e.g. a sentence longer than the cache: that request only
                error = StageError("sentence_too_long", f"a sentence is too long to synthesise: {exc}")
                failures.append((request_id, (error, "error")))
            except Exception as exc:  # noqa: BLE001 - reported to that request only
                log.exception("prefill failed")
                failures.append((request_id, (exc, None)))
        return failures
