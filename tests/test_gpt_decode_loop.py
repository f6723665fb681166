"""The GPT stage's decode loop (no Ray: the loop is plain asyncio over a T2SEngine)."""
from __future__ import annotations

import asyncio

import numpy as np
import torch

from deployments.gpt import DecodeLoop
from models.pipeline import TextFeatures, VoicePrompt
from models.t2s import SamplingParams, T2SConfig, Text2Semantic, generate


def tiny_model() -> Text2Semantic:
    torch.manual_seed(0)
    model = Text2Semantic(T2SConfig(dim=32, n_head=4, n_layer=2))
    with torch.no_grad():
        model.predict.weight.mul_(10)
    return model.eval().requires_grad_(False)


def request(seed: int, max_new_tokens: int) -> tuple[VoicePrompt, TextFeatures, SamplingParams]:
    g = np.random.default_rng(seed)
    prompt = VoicePrompt(g.integers(0, 1024, 20), np.zeros((1, 512, 1), np.float32), g.integers(0, 732, 6),
                         g.standard_normal((1024, 6)).astype(np.float32))
    target = TextFeatures(g.integers(0, 732, 9), g.standard_normal((1024, 9)).astype(np.float32), "")
    return prompt, target, SamplingParams(seed=seed, top_k=20, max_new_tokens=max_new_tokens)


async def decode_all(loop: DecodeLoop, requests) -> list[list[int]]:
    async def one(prompt, target, params):
        tokens = []
        async for chunk, _ in loop.decode(prompt, target, params):
            tokens += list(chunk)
        return tokens

    return await asyncio.gather(*(one(*r) for r in requests))


def test_compiled_decode_loop_gives_each_request_its_eager_tokens():
    """gpt_compile: the loop steps the compiled engine from worker threads, requests of different
    lengths share steps, and each still gets the tokens it gets decoded alone, eagerly."""
    model = tiny_model()
    loop = DecodeLoop("tiny@v1", model, max_batch=3, max_seq=128, max_queued=8, compile=True)
    loop.engine.warm_up()
    requests = [request(seed, n) for seed, n in ((1, 12), (2, 30), (3, 21))]
    got = asyncio.run(decode_all(loop, requests))
    for (prompt, target, params), tokens in zip(requests, got):
        phones = np.concatenate([prompt.prompt_phones, target.phone_ids])
        bert = np.concatenate([prompt.prompt_bert, target.bert], axis=1)
        alone = generate(model, phones, bert, prompt.prompt_tokens, params)
        assert tokens == alone.tokens.tolist()
