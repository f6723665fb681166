"""GPT (text-to-semantic) stage with continuous batching, many models per replica.

Each loaded model version gets a `DecodeLoop`: one asyncio task that owns a `T2SEngine` (a
preallocated pool of KV-cache slots). Requests join the running batch at the next step after
their prefill and leave when they stop, each with its own sampling parameters, seed and stop rule.
Tokens go back to each caller through its own queue, so `generate_stream` relays chunks while
decoding continues. Admission control: at most `max_batch` rows decode at once; further requests
wait in a bounded queue, and past `max_queued` they are refused at once (the ingress answers 503).

Model versions are multiplexed (`@serve.multiplexed`): a request names `model_id@version`, Serve
routes it to a replica that holds that version, and the replica loads it on first use and evicts
the least recently used version beyond GSV_MODELS_PER_REPLICA.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import numpy as np
import torch
from ray import serve

from deployments import metrics
from deployments.common import (MODELS_PER_REPLICA, StageError, limit_threads, resolve_device,
                                torch_dtype)
from deployments.model_registry import ModelRegistry
from models.pipeline import TextFeatures, VoicePrompt, t2s_inputs
from models.t2s import GenerationResult, SamplingParams, T2SEngine, Text2Semantic, upstream_sovits_codes

log = logging.getLogger("gsv.gpt")


@dataclass
class _Request:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class DecodeLoop:
    """Continuous batching over one model version."""

    def __init__(self, key: str, model: Text2Semantic, max_batch: int, max_seq: int, max_queued: int,
                 compile: bool = False):
        self.key, self.model = key, model
        self.engine = T2SEngine(model, max_batch=max_batch, max_seq=max_seq, compile=compile)
        self.max_queued = max_queued
        self.waiting: asyncio.Queue = asyncio.Queue()
        self.requests: dict[int, _Request] = {}
        self.to_cancel: list[int] = []  # applied between steps (the engine is not thread-safe)
        self.ids = itertools.count()
        self.task: asyncio.Task | None = None

    def healthy(self) -> bool:
        return not (self.task is not None and self.task.done() and not self.task.cancelled()
                    and self.task.exception() is not None)

    async def decode(self, prompt: VoicePrompt, target: TextFeatures, params: SamplingParams):
        """Yield (tokens, stop_reason) as they are decoded; stop_reason is None until the end."""
        if self.engine.free_slots == 0 and self.waiting.qsize() >= self.max_queued:
            yield StageError("overloaded", "the GPT stage is at capacity; retry shortly", 503), "error"
            return
        request_id = next(self.ids)
        state = _Request()
        self.requests[request_id] = state
        phones, bert = t2s_inputs(prompt, target)
        await self.waiting.put((request_id, phones, bert, prompt.prompt_tokens, params))
        metrics.queue_depth("gpt", self.waiting.qsize())
        self._ensure_running()
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
            self.requests.pop(request_id, None)
            if not finished:  # the caller went away (client disconnect): stop decoding this row
                self.to_cancel.append(request_id)

    def stats(self) -> dict[str, int]:
        return {"active": self.engine.num_active, "waiting": self.waiting.qsize()}

    def _ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._steps()
        except BaseException as exc:  # a broken loop must fail its requests, never strand them
            log.exception("decode loop of %s failed", self.key)
            for state in self.requests.values():
                state.queue.put_nowait((exc, None))
            raise

    async def _steps(self) -> None:
        while True:
            while self.to_cancel:
                self.engine.cancel(self.to_cancel.pop())
            admitted, free = [], self.engine.free_slots
            while free > 0 and not self.waiting.empty():
                admitted.append(self.waiting.get_nowait())
                free -= 1
            if admitted:
                for request_id, message in await asyncio.to_thread(self._admit, admitted):
                    if request_id in self.requests:
                        self.requests[request_id].queue.put_nowait(message)
            if self.engine.num_active == 0:
                if self.waiting.empty():
                    metrics.active_rows("gpt", 0)
                    return
                continue
            metrics.batch_size("gpt", self.engine.num_active)
            metrics.active_rows("gpt", self.engine.num_active)
            metrics.queue_depth("gpt", self.waiting.qsize())
            outputs = await asyncio.to_thread(self.engine.step)
            for out in outputs:
                state = self.requests.get(out.request_id)
                if state is None:
                    continue
                token = [] if out.token is None else [int(out.token)]
                state.queue.put_nowait((token, out.reason if out.finished else None))

    def _admit(self, admitted: list[tuple]) -> list[tuple[int, tuple]]:
        """Prefill new requests (worker thread). Returns per-request failures for the loop to deliver:
        asyncio queues must only be touched from the event loop thread."""
        failures = []
        for request_id, phones, bert, prompt_tokens, params in admitted:
            if request_id not in self.requests:
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

    def __del__(self) -> None:
        metrics.model_event("gpt", self.key, "unload")


@serve.deployment(name="GPT", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class GPTDeployment:
    def __init__(self, data_dir: str, device: str = "cpu", dtype: str = "float32",
                 num_threads: int | None = None, max_batch: int = 8, max_seq: int = 2560,
                 max_queued: int = 256, compile: bool = False):
        limit_threads(num_threads)
        self.device = resolve_device(device)
        self.dtype = torch_dtype(dtype, self.device)
        self.registry = ModelRegistry(data_dir)
        self.max_batch, self.max_seq, self.max_queued = max_batch, max_seq, max_queued
        self.compile = compile  # torch.compile the decode step (compiled while the version loads)
        self.loops: dict[str, DecodeLoop] = {}

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_queued = int(config.get("max_queued", self.max_queued))
        for loop in self.loops.values():
            loop.max_queued = self.max_queued

    def check_health(self) -> None:
        for loop in list(self.loops.values()):
            if not loop.healthy():
                raise RuntimeError(f"decode loop of {loop.key} died")

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, key: str) -> DecodeLoop:
        ref = self.registry.resolve(key)
        started = time.perf_counter()
        model = await asyncio.to_thread(Text2Semantic.from_checkpoint, ref.paths.gpt, device=self.device,
                                        dtype=self.dtype)
        loop = DecodeLoop(key, model, self.max_batch, self.max_seq, self.max_queued, self.compile)
        if self.compile:  # compile now, before this version takes traffic
            await asyncio.to_thread(loop.engine.warm_up)
        self.loops = {k: v for k, v in self.loops.items() if v is not None}
        self.loops[key] = loop
        metrics.model_event("gpt", key, "load")
        log.info("loaded GPT %s in %.1f s", key, time.perf_counter() - started)
        return loop

    async def warm(self, key: str) -> str:
        await self.get_model(key)
        return key

    # ------------------------------------------------------------------------- public methods
    async def generate(self, key: str, prompt: VoicePrompt, target: TextFeatures,
                       params: SamplingParams) -> np.ndarray | StageError:
        """All tokens of one sentence, as upstream hands them to SoVITS."""
        loop = await self.get_model(key)
        tokens: list[int] = []
        reason = "eos"
        with metrics.timed("gpt", key):
            async for chunk, stop_reason in loop.decode(prompt, target, params):
                if isinstance(chunk, StageError):
                    return chunk
                tokens.extend(chunk)
                reason = stop_reason or reason
        result = GenerationResult(torch.tensor(tokens, dtype=torch.long), reason, len(prompt.prompt_tokens))
        return upstream_sovits_codes(result).numpy()

    async def generate_stream(self, key: str, prompt: VoicePrompt, target: TextFeatures, params: SamplingParams,
                              first_chunk: int, chunk: int) -> AsyncIterator[np.ndarray | StageError]:
        """Tokens in chunks as they are decoded: `first_chunk` tokens first (time to first audio),
        then `chunk` at a time; the last chunk may be shorter."""
        loop = await self.get_model(key)
        buffer: list[int] = []
        target_size = first_chunk
        async for tokens, stop_reason in loop.decode(prompt, target, params):
            if isinstance(tokens, StageError):
                yield tokens
                return
            buffer.extend(tokens)
            if stop_reason is not None or len(buffer) >= target_size:
                if buffer:
                    yield np.asarray(buffer, dtype=np.int64)
                buffer, target_size = [], chunk

    def stats(self) -> dict[str, int]:
        totals = {"active": 0, "waiting": 0}
        for loop in self.loops.values():
            for name, value in loop.stats().items():
                totals[name] += value
        return totals
