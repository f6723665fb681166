"""Adapter from ../shared/reference/parity/check_parity.py to gsv-serve's models/.

    python ../shared/reference/parity/check_parity.py --adapter tests/parity/adapter.py \
        --golden ../shared/reference/gpt_sovits_v2/golden/tiny_seed1234_A \
        --ckpt ../shared/reference/gpt_sovits_v2/checkpoints/tiny_seed1234 --require all

Every function calls the project's public model API; nothing here re-implements model math.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from check_parity import checkpoint_files  # noqa: E402  (the checker puts itself on sys.path)

from models import audio  # noqa: E402
from models.pipeline import (ModelPaths, Pipeline, SynthesisSettings, finish_fragment,  # noqa: E402
                             load_reference_wav, to_int16)
from models.t2s import SamplingParams, generate, upstream_sovits_codes  # noqa: E402

torch.set_num_threads(1)


class Handle:
    def __init__(self, ckpt_dir: str):
        files = checkpoint_files(ckpt_dir)
        self.pipeline = Pipeline(ModelPaths(gpt=files["t2s"], sovits=files["s2"], hubert_dir=files["hubert"],
                                            bert_dir=files["bert"]))


def load(ckpt_dir):
    return Handle(ckpt_dir)


def ref_spectrogram(h, wav32k):
    return audio.spectrogram(torch.as_tensor(wav32k, dtype=torch.float32)).numpy()


def hubert_input(h, wav32k):
    return audio.hubert_input(np.asarray(wav32k, dtype=np.float32))


def prompt_semantic(h, wav16k):
    p = h.pipeline
    with torch.inference_mode():
        ssl = p.hubert(torch.as_tensor(wav16k, dtype=torch.float32))
        projected = p.sovits.ssl_projection(ssl)
        codes = p.sovits.extract_prompt_tokens(ssl)
    return {"codes": codes.numpy(), "hubert": ssl[0].transpose(0, 1).numpy(), "ssl_proj": projected[0].numpy()}


def ge(h, ref_spec):
    with torch.inference_mode():
        return h.pipeline.sovits.reference_embedding([torch.as_tensor(ref_spec)]).reshape(-1).numpy()


def frontend(h, text, lang, with_bert):
    fe = h.pipeline.frontend
    result = fe.phonemize(text, lang)
    out = {"phone_ids": np.asarray(result.phone_ids), "phone_symbols": list(result.phone_symbols),
           "norm_text": result.norm_text,
           "segments": [{"lang": s.lang, "text": s.text, "phone_ids": list(s.phone_ids),
                         "word2ph": None if s.word2ph is None else list(s.word2ph), "norm_text": s.norm_text,
                         **({"bert_input_ids": list(s.bert_input_ids)} if s.bert_input_ids is not None else {})}
                        for s in result.segments]}
    if with_bert:
        out["bert"] = np.asarray(fe.bert(result))
    return out


def split_text(h, text, lang, method):
    fe = h.pipeline.frontend
    sentences = fe.split_sentences(text, lang, method)
    items = []
    for sentence in sentences:
        result = fe.phonemize(sentence, lang)
        items.append({"phone_ids": np.asarray(result.phone_ids), "norm_text": result.norm_text})
    return {"pre_seg_text": sentences, "items": items}


def t2s_first_logits(h, phone_ids, bert, prompt):
    model = h.pipeline.t2s
    with torch.inference_mode():
        return model.first_step_logits(torch.as_tensor(phone_ids), torch.as_tensor(bert), torch.as_tensor(prompt)).numpy()


def t2s_greedy(h, phone_ids, bert, prompt, repetition_penalty, max_new_tokens, parallel=False):
    params = SamplingParams(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=repetition_penalty,
                            max_new_tokens=int(max_new_tokens), seed=0)
    result = generate(h.pipeline.t2s, torch.as_tensor(phone_ids), torch.as_tensor(bert), torch.as_tensor(prompt),
                      params, record_logits=True)
    tokens = result.tokens.numpy()
    if parallel:
        # upstream's batched path returns y[:-1] when it stops on the length cap
        if result.stop_reason == "max_tokens":
            tokens = tokens[:-1]
        return {"tokens": tokens}
    return {"tokens": tokens, "raw_logits": result.logits.numpy(),
            "sovits_codes": upstream_sovits_codes(result).numpy()}


def sovits_decode(h, codes, phone_ids, ref_specs, noise_scale, noise=None):
    sovits, vocoder = h.pipeline.sovits, h.pipeline.vocoder
    with torch.inference_mode():
        g = sovits.reference_embedding([torch.as_tensor(s) for s in ref_specs])
        inter = sovits.decode_latent(torch.as_tensor(codes), torch.as_tensor(phone_ids), g, noise_scale=noise_scale,
                                     noise=None if noise is None else torch.as_tensor(noise)[None],
                                     return_intermediates=True)
        wav = vocoder(inter["z"], g)
    return {"wav": wav.reshape(-1).numpy(), "ge": g.reshape(-1).numpy(), "m_p": inter["m_p"][0].numpy(),
            "logs_p": inter["logs_p"][0].numpy(), "y_mask": inter["y_mask"].reshape(-1).numpy(),
            "z": inter["z_flow"][0].numpy()}


def e2e(h, ref_wav_path, prompt_text, prompt_lang, text, text_lang, settings):
    p = h.pipeline
    sampling = SamplingParams(top_k=int(settings["top_k"]), top_p=float(settings["top_p"]),
                              temperature=float(settings["temperature"]),
                              repetition_penalty=float(settings["repetition_penalty"]),
                              max_new_tokens=int(settings["early_stop_num"]) + 1)
    synth = SynthesisSettings(sampling=sampling, text_split_method=settings["text_split_method"],
                              speed=float(settings["speed_factor"]), noise_scale=float(settings["noise_scale"]),
                              fragment_interval=float(settings["fragment_interval"]), seed=int(settings["seed"]))
    prompt = p.voice_prompt(load_reference_wav(ref_wav_path), prompt_text, prompt_lang)
    sentences, fragments = [], []
    for trace in p.trace(prompt, text, text_lang, synth):
        sentences.append(trace)
        fragments.append(finish_fragment(trace["wav"], synth.fragment_interval))
    audio_f = np.concatenate(fragments) if fragments else np.zeros(0, np.float32)
    return {"audio_int16": to_int16(audio_f), "sr": audio.SAMPLE_RATE, "sentences": sentences}
