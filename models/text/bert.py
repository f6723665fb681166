"""Chinese BERT features for the T2S model (upstream ``TextPreprocessor.get_bert_feature``).

For a normalised zh run (hanzi + ``! ? … , . -``, one BERT token per character) the feature is
the output of the third-to-last transformer layer (``hidden_states[-3]``), without the [CLS]
and [SEP] rows, with row i repeated ``word2ph[i]`` times and transposed: ``[hidden, n_phones]``.

Speed-ups that keep the numbers identical:
* The encoder is truncated after the layer whose output is used and the masked-LM head is never
  run (``hidden_states[-3]`` is exactly the last hidden state of the first L-2 layers).
* ``batch`` runs many runs as one padded forward pass (right padding + attention mask; the
  unpadded rows match one-at-a-time calls to float rounding).
* ``cached`` keeps an LRU of recent results, meant for prompt (reference) texts that repeat.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

# upstream takes hidden_states[-3]: the output of layer L-2 of an L-layer encoder
_LAYERS_FROM_TOP = 2
MAX_CHARS = 510  # 512 positions minus [CLS] and [SEP]


class BertFeatures:
    def __init__(self, encoder: torch.nn.Module, tokenizer, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, cache_size: int = 128, max_batch: int = 16):
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.hidden_size = int(encoder.config.hidden_size)
        self.max_batch = max_batch
        self._cache: OrderedDict[tuple[str, tuple[int, ...]], torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, **kwargs) -> "BertFeatures":
        """Load a transformers BERT folder (config.json, weights, tokenizer files); never downloads."""
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no BERT model folder at {path} (config.json missing)")
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForMaskedLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        encoder = truncate_for_features(model.base_model)
        return cls(encoder.to(device), tokenizer, device=device, dtype=dtype, **kwargs)

    # ------------------------------------------------------------------------------------------

    def token_ids(self, text: str) -> list[int]:
        """Token ids with [CLS]/[SEP], as upstream tokenises the run."""
        return list(self.tokenizer(text)["input_ids"])

    def __call__(self, norm_text: str, word2ph: Sequence[int]) -> torch.Tensor:
        return self.batch([(norm_text, word2ph)])[0]

    def cached(self, norm_text: str, word2ph: Sequence[int]) -> torch.Tensor:
        """Like ``__call__`` with an LRU cache (for prompt texts). Do not modify the result."""
        key = (norm_text, tuple(int(n) for n in word2ph))
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        feature = self(norm_text, word2ph)
        if self._cache_size > 0:
            with self._cache_lock:
                self._cache[key] = feature
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return feature

    def cache_info(self) -> dict:
        with self._cache_lock:
            return {"size": len(self._cache), "max_size": self._cache_size}

    def batch(self, items: Sequence[tuple[str, Sequence[int]]]) -> list[torch.Tensor]:
        """Features for many (norm_text, word2ph) runs; padded batches of up to ``max_batch``.

        Runs are grouped by length to keep padding small; results come back in input order.
        A run longer than 510 characters is encoded in 510-character pieces.
        """
        for text, word2ph in items:
            if len(word2ph) != len(text):
                raise ValueError(f"word2ph has {len(word2ph)} entries for {len(text)} characters: {text!r}")
        # Texts longer than BERT's 512 positions (upstream would fail) are encoded in pieces.
        pieces = [(i, text[a : a + MAX_CHARS]) for i, (text, _) in enumerate(items)
                  for a in range(0, len(text), MAX_CHARS)]
        rows: list[torch.Tensor | None] = [None] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][1]))
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            for k, char_rows in zip(chunk, self._char_rows([pieces[k][1] for k in chunk])):
                rows[k] = char_rows
        per_item: list[list[torch.Tensor]] = [[] for _ in items]
        for (i, _), char_rows in zip(pieces, rows):
            per_item[i].append(char_rows)
        out = []
        for (text, word2ph), parts in zip(items, per_item):
            if not parts:  # empty text: nothing to encode (upstream would fail here)
                out.append(torch.zeros(self.hidden_size, 0, dtype=self.dtype, device=self.device))
            else:
                out.append(_expand(torch.cat(parts, dim=0), word2ph))
        return out

    # ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _char_rows(self, texts: list[str]) -> list[torch.Tensor]:
        """One [n_chars, hidden] matrix per text (row i = character i)."""
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.encoder(**enc).last_hidden_state
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        rows = []
        for b, text in enumerate(texts):
            n_tokens = int(lengths[b]) - 2
            if n_tokens == len(text):
                rows.append(hidden[b, 1 : 1 + n_tokens])
            else:  # a character that is not exactly one token: align per character instead
                rows.append(self._aligned_rows(text))
        return rows

    def _aligned_rows(self, text: str) -> torch.Tensor:
        enc = self.tokenizer(list(text), is_split_into_words=True, return_tensors="pt")
        word_ids = enc.word_ids(0)
        hidden = self.encoder(**{k: v.to(self.device) for k, v in enc.items()}).last_hidden_state[0]
        rows = torch.zeros(len(text), self.hidden_size, dtype=hidden.dtype, device=hidden.device)
        seen: set[int] = set()
        for t, w in enumerate(word_ids):
            if w is not None and w not in seen:  # first sub-token of each character
                rows[w] = hidden[t]
                seen.add(w)
        return rows


def truncate_for_features(encoder: torch.nn.Module) -> torch.nn.Module:
    """Drop the top two layers: the last hidden state is then upstream's ``hidden_states[-3]``."""
    layers = encoder.encoder.layer
    if len(layers) <= _LAYERS_FROM_TOP - 1:
        raise ValueError(f"BERT has {len(layers)} layers; hidden_states[-3] needs at least 2")
    encoder.encoder.layer = layers[: len(layers) - _LAYERS_FROM_TOP]
    encoder.config.num_hidden_layers = len(encoder.encoder.layer)
    return encoder


def _expand(char_rows: torch.Tensor, word2ph: Sequence[int]) -> torch.Tensor:
    """[n_chars, hidden] -> [hidden, n_phones], row i repeated word2ph[i] times."""
    repeats = torch.as_tensor(list(word2ph), dtype=torch.long, device=char_rows.device)
    return torch.repeat_interleave(char_rows, repeats, dim=0).T.contiguous()
