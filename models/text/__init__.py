"""Text frontend: symbol table, sentence splitting, per-language G2P, BERT features.

Kept import-light on purpose: importing ``models.text`` loads no model, dictionary or tokenizer.
Use ``models.text.frontend.TextFrontend`` for the full pipeline.
"""

from models.text.symbols import PUNCTUATION, SYMBOL_TO_ID, SYMBOLS, cleaned_text_to_sequence

__all__ = ["PUNCTUATION", "SYMBOL_TO_ID", "SYMBOLS", "cleaned_text_to_sequence"]
