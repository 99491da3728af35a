"""InstructWorld's fixed vocabulary: the 64-word lexicon, the alphabet and the courtesy prefix."""
from __future__ import annotations

from instructjax.tokenizer import WORLD_ALPHABET

# Verbatim from the spec ("Lexicon (64 words)"), in its order.
LEXICON: tuple[str, ...] = tuple("""
ant bag bat bed bee box bus cake cat cow cup day dog door duck egg fan fish fox frog gate girl goat
hat hen hill home jam key kid kite lamp leaf lion map milk moon nest net owl pen pig pot rain ring
road rose sea ship shoe sky snow sock star sun tea tent toy tree van web wolf yak zoo
""".split())
LEXICON_SET = frozenset(LEXICON)

DIGITS: tuple[str, ...] = tuple("0123456789")

# The whole world writes in this alphabet (lowercase, uppercase, digits, space, newline, :.!?,()).
ALPHABET: str = WORLD_ALPHABET

# A response may start with this prefix; content() removes one copy of it.
COURTESY_PREFIX = "sure! "

assert len(LEXICON) == 64 and len(LEXICON_SET) == 64, "the spec's lexicon has 64 distinct words"
