"""The v2 phoneme table: built from its recipe, checked against upstream's list and SPEC 2.1."""

import hashlib
import json

import pytest

from models.text import symbols
from models.text.symbols import SYMBOL_TO_ID, SYMBOLS_V1, SYMBOLS_V2, cleaned_text_to_sequence

# SPEC 2.1: SHA-256 of the 732 symbols joined with "\n".
V2_SHA256 = "0771f6cd6f6201e8c2b0de921dc69cc04caf3f346c599d4a41413967d5674da7"


def test_sizes():
    assert len(SYMBOLS_V1) == 322
    assert len(SYMBOLS_V2) == 732
    assert len(set(SYMBOLS_V2)) == 732


def test_sha256_matches_spec():
    digest = hashlib.sha256("\n".join(SYMBOLS_V2).encode("utf-8")).hexdigest()
    assert digest == V2_SHA256


def test_matches_reference_json(shared_dir):
    path = shared_dir / "reference" / "gpt_sovits_v2" / "symbols_v2.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    assert list(SYMBOLS_V2) == json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "symbol,idx",
    [("!", 0), (",", 1), ("-", 2), (".", 3), ("?", 4), ("AA", 5), ("SP", 77), ("SP2", 78),
     ("SP3", 79), ("UNK", 86), ("_", 95), ("a", 96), ("zh", 320), ("…", 321), ("[", 322),
     ("]", 323), ("ㄱ", 324), ("停", 351), ("空", 352), ("Ya", 353), ("Yz", 731)],
)
def test_landmarks(symbol, idx):
    assert SYMBOL_TO_ID[symbol] == idx


def test_v1_is_prefix_of_v2():
    assert SYMBOLS_V2[:322] == SYMBOLS_V1


def test_component_counts():
    assert len(symbols.ARPA) == 71
    assert len(symbols.YUE_SYMBOLS) == 379
    assert len(symbols.KO_SYMBOLS) == 29
    assert len(symbols.ZH_FINALS) * len(symbols.ZH_TONES) == 195


def test_cleaned_text_to_sequence():
    assert cleaned_text_to_sequence(["n", "i2", "h", "ao3", ","]) == [227, 167, 158, 119, 1]
    # v1 and v2 share the first 322 ids
    assert cleaned_text_to_sequence(["n", "i2"], version="v1") == [227, 167]


def test_cleaned_text_to_sequence_v1_rejects_v2_only_symbol():
    with pytest.raises(KeyError, match="Ya1"):
        cleaned_text_to_sequence(["Ya1"], version="v1")
