"""The world's words: one table that both the caption writer and the caption parser read.

Nouns are shapes; adjectives are colours, sizes and fill styles; position,
relation, number and background words complete the language. Filler text
(long prompts) must avoid every word listed here, which a test checks, so
that the facts of a padded prompt are exactly the facts of its key sentences.
"""

from __future__ import annotations

from llm_dit.world.scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, STYLES

# canonical -> (singular synonyms, plural synonyms); the first of each is the canonical word.
SHAPE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "circle": (("circle", "disc", "disk"), ("circles", "discs", "disks")),
    "square": (("square", "box"), ("squares", "boxes")),
    "triangle": (("triangle",), ("triangles",)),
    "star": (("star",), ("stars",)),
    "cross": (("cross",), ("crosses",)),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson"),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink", "magenta"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "flat": ("plain", "solid", "flat"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted"),
}
# "with stripes" / "with dots" after the noun.
STYLE_NOUNS: dict[str, tuple[str, ...]] = {"striped": ("stripes",), "dotted": ("dots", "spots")}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {"white": ("white",), "gray": ("gray", "grey"), "black": ("black",)}
BACKGROUND_NOUNS = ("background", "backdrop")
NUMBER_WORDS: dict[str, int] = {"one": 1, "two": 2, "three": 3, "four": 4, "1": 1, "2": 2, "3": 3, "4": 4}
ARTICLES = ("a", "an")
# Position words: rows, columns, and the centre word that completes a half-stated cell.
ROW_WORDS: dict[str, int] = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
COL_WORDS: dict[str, int] = {"left": 0, "right": 2}
CENTRE_WORDS = ("center", "centre", "middle")
# Relations: "to the left of", "left of", "to the right of", "above", "below", ...
SIDE_RELATIONS: dict[str, str] = {"left": "left_of", "right": "right_of"}
VERTICAL_RELATIONS: dict[str, str] = {"above": "above", "over": "above", "below": "below", "under": "below", "beneath": "below"}
NUMBER_NAMES = {1: "one", 2: "two", 3: "three", 4: "four"}
ROW_NAMES = {0: ("top", "upper"), 1: ("middle", "center"), 2: ("bottom", "lower")}
COL_NAMES = {0: ("left",), 1: ("center", "middle"), 2: ("right",)}


def _invert(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {word: canonical for canonical, words in table.items() for word in words}


SINGULAR_SHAPE = {w: s for s, (sing, _) in SHAPE_WORDS.items() for w in sing}
PLURAL_SHAPE = {w: s for s, (_, plur) in SHAPE_WORDS.items() for w in plur}
COLOUR_OF = _invert(COLOUR_WORDS)
SIZE_OF = _invert(SIZE_WORDS)
STYLE_OF = _invert(STYLE_WORDS)
STYLE_NOUN_OF = _invert(STYLE_NOUNS)
BACKGROUND_OF = _invert(BACKGROUND_WORDS)

ALL_WORDS: frozenset[str] = frozenset(
    [*SINGULAR_SHAPE, *PLURAL_SHAPE, *COLOUR_OF, *SIZE_OF, *STYLE_OF, *STYLE_NOUN_OF, *BACKGROUND_OF]
    + [*BACKGROUND_NOUNS, *NUMBER_WORDS, *ARTICLES, *ROW_WORDS, *COL_WORDS, *CENTRE_WORDS, *VERTICAL_RELATIONS]
)

assert set(SHAPE_WORDS) == set(SHAPES) and set(COLOUR_WORDS) == set(COLOURS)
assert set(SIZE_WORDS) == set(SIZES) and set(STYLE_WORDS) == set(STYLES) and set(BACKGROUND_WORDS) == set(BACKGROUNDS)
