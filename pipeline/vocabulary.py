"""The canonical degradation vocabulary: the one list of degradation types lmdir speaks.

Everything that names a degradation — synthetic degradation, manifests, the weight-free analysis,
the mapping of free MLLM text, the restorer's degradation vector — uses these names, so a label
written by one stage is understood by every other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Order matters: it is the index order of the degradation vector fed to the restorer.
DEGRADATION_TYPES: tuple[str, ...] = (
    "clean",
    "noise",
    "blur",
    "jpeg",
    "low-light",
    "haze",
    "rain",
    "snow",
    "raindrop",
    "shadow",
    "inpainting",
)

# The restoration task a degradation type asks for (the names the all-in-one papers use).
TASK_OF_TYPE: dict[str, str] = {
    "clean": "identity",
    "noise": "denoise",
    "blur": "deblur",
    "jpeg": "dejpeg",
    "low-light": "lowlight",
    "haze": "dehaze",
    "rain": "derain",
    "snow": "desnow",
    "raindrop": "deraindrop",
    "shadow": "deshadow",
    "inpainting": "inpaint",
}
TASKS: tuple[str, ...] = tuple(dict.fromkeys(TASK_OF_TYPE.values()))

# Phrases a captioning/describing model or a user may use for each type. Matched as whole words,
# longest phrase first, so "raindrops" is not read as "rain".
SYNONYMS: dict[str, tuple[str, ...]] = {
    "clean": ("clean", "no degradation", "high quality", "sharp and clear", "pristine"),
    "noise": ("noise", "noisy", "denoise", "denoising", "grain", "grainy", "speckle", "speckled", "sensor noise"),
    "blur": (
        "blur", "blurry", "blurred", "blurring", "deblur", "deblurring", "out of focus", "defocus", "defocused",
        "motion blur", "shaky", "unsharp", "soft focus",
    ),
    "jpeg": (
        "jpeg", "jpg", "compression", "compressed", "blocky", "blockiness", "block artifacts",
        "compression artifacts", "artifacts", "ringing", "pixelated",
    ),
    "low-light": (
        "low light", "low-light", "lowlight", "dark", "darkness", "underexposed",
        "under-exposed", "dim", "dimly lit", "night", "poorly lit",
    ),
    "haze": ("haze", "hazy", "dehaze", "dehazing", "fog", "foggy", "mist", "misty", "smog", "smoggy"),
    "rain": ("rain", "rainy", "derain", "deraining", "raining", "rain streaks", "streaks", "rainfall"),
    "snow": ("snow", "snowy", "desnow", "desnowing", "snowing", "snowflakes", "snowfall"),
    "raindrop": ("raindrop", "raindrops", "water droplets", "droplets", "drops on the lens"),
    "shadow": ("shadow", "shadows", "shadowed"),
    "inpainting": ("missing region", "missing regions", "masked", "holes", "occluded", "incomplete"),
}

# What a user might type to ask for each restoration, in wordings unlike the vocabulary's own:
# bench.peers guides the restorer with them. A user's words only choose the types
# (restore.priors_online), so these measure how well guidance by words works; training never
# reads them.
HELD_OUT_INSTRUCTIONS: dict[str, str] = {
    "noise": "my photo has speckles all over it, please smooth them away",
    "blur": "the shot came out soft and smeared, bring back crisp edges",
    "jpeg": "it was saved with a tiny file size and looks chunky, restore the detail",
    "low-light": "it was shot at night and is barely visible",
    "haze": "there is fog everywhere, make the view crisp",
    "rain": "water streaks from the storm cover the scene",
    "snow": "flakes are falling in front of everything",
}

# Adjectives for a severity in [0, 1]; the bounds are the upper edges of each band.
SEVERITY_WORDS: tuple[tuple[float, str], ...] = ((0.34, "mild"), (0.67, "moderate"), (1.01, "heavy"))

_NOUN: dict[str, str] = {
    "clean": "no degradation",
    "noise": "noise",
    "blur": "blur",
    "jpeg": "JPEG compression artifacts",
    "low-light": "low light",
    "haze": "haze",
    "rain": "rain streaks",
    "snow": "snow",
    "raindrop": "raindrops",
    "shadow": "shadows",
    "inpainting": "missing regions",
}


def check_type(name: str) -> str:
    """Return ``name`` if it is a canonical type, else raise a ValueError listing the valid ones."""
    if name not in DEGRADATION_TYPES:
        raise ValueError(f"unknown degradation type {name!r}; valid types: {', '.join(DEGRADATION_TYPES)}")
    return name


def task_for(types: Sequence[str]) -> str:
    """The task label of a (possibly composite) degradation: its types' tasks joined by '+'."""
    real = [t for t in types if t != "clean"]
    if not real:
        return TASK_OF_TYPE["clean"]
    return "+".join(TASK_OF_TYPE[check_type(t)] for t in real)


def _phrase_patterns() -> list[tuple[re.Pattern[str], str]]:
    pairs = [(p, t) for t, phrases in SYNONYMS.items() for p in phrases]
    pairs.sort(key=lambda pt: -len(pt[0]))
    return [(re.compile(r"(?<![a-z])" + re.escape(p) + r"(?![a-z])"), t) for p, t in pairs]


_PATTERNS = _phrase_patterns()
_NEGATION = re.compile(r"\b(?:no|not|never|without|free of|free from|none|neither|nor)\b|n['’]t\b")
# Words that may stand before a degradation without changing what it names ("visible blur").
_DEGREE_WORDS = ("heavy|strong|severe|significant|noticeable|visible|obvious|prominent|considerable|mild|moderate|"
                 "slight|slightly|some|light|lots of|a lot of|very|any")
_DEGREE = rf"(?:{_DEGREE_WORDS})"
# Where a negation's reach ends for certain: clause punctuation, a contrast word, or a new claim
# joined by "and"/"with" ("no noise and heavy rain" asserts the rain). Without the contrast words
# "not blurry but very noisy" would cancel the noise the sentence asserts.
_REACH_END = re.compile(r"[.;:!?\n]|\b(?:but|however|although|though|yet|while)\b"
                        rf"|\b(?:and|with|plus)\s+{_DEGREE}\b")
_CONNECTOR = re.compile(rf"\b(?:or|nor|and|{_DEGREE_WORDS})\b")
_LIST_CLOSE = re.compile(r"\b(?:or|nor)\b")
# A piece that opens with a degree word makes a claim of its own ("no snow, slight fog or haze").
_CLAIM = re.compile(rf"\s*{_DEGREE}\b")


def _bare(piece: str) -> str:
    """What is left of a comma-separated piece of text without its degradation phrases and the
    connectors and degree words around them: nothing, for an item of a list ("or visible blur")."""
    for pattern, _ in _PATTERNS:
        piece = pattern.sub(" ", piece)
    return _CONNECTOR.sub(" ", piece).strip()


def _negated(text: str, start: int) -> bool:
    """Whether a negation governs the phrase at ``text[start:]``.

    Within a clause, a negation reaches the phrases after it up to the first comma — and on across
    commas through a list of degradation phrases joined by "or"/"nor" ("no noise, blur, or
    compression artifacts"); a comma that starts anything else ends it ("no noise, the image is
    blurry or out of focus" asserts the blur, "no snow, slight fog or haze" the haze)."""
    ends = [m.end() for m in _REACH_END.finditer(text, 0, start)]
    clause_start = ends[-1] if ends else 0
    cues = list(_NEGATION.finditer(text, clause_start, start))
    if not cues:
        return False
    first_comma = text.find(",", cues[-1].end(), start)
    if first_comma < 0:
        return True
    after = _REACH_END.search(text, start)
    # The list: the pieces after the cue's comma while each is only phrases, connectors and degree words.
    pieces, at = [], first_comma + 1
    for piece in text[at: after.start() if after else len(text)].split(","):
        if _bare(piece) or _CLAIM.match(piece):
            break
        pieces.append((at, piece))
        at += len(piece) + 1
    in_list = bool(pieces) and start < pieces[-1][0] + len(pieces[-1][1])
    return in_list and any(_LIST_CLOSE.search(piece) for _, piece in pieces)


def text_to_types(text: str) -> list[str]:
    """Map free text ("a dark, grainy photo with some rain") onto canonical types.

    Types are returned in order of first mention. A phrase a negation governs ("no noise", "without
    blur", "isn't noisy") is not counted. A negation reaches to the end of its clause, a contrast
    word or a new claim, and across a comma only into a list of degradations joined by "or"/"nor"
    (``_negated``): "not blurry but very noisy" is ``["noise"]``, "no noise, heavy rain" is
    ``["rain"]``, "no noise, blur, or compression artifacts" is ``[]``. Text naming nothing known
    maps to ``[]`` — the caller decides whether that means clean or unknown.
    """
    lowered = text.lower()
    consumed = [False] * len(lowered)
    found: list[tuple[int, str]] = []
    for pattern, dtype in _PATTERNS:
        for m in pattern.finditer(lowered):
            if any(consumed[m.start():m.end()]):
                continue
            for i in range(m.start(), m.end()):
                consumed[i] = True
            if dtype != "clean" and _negated(lowered, m.start()):
                continue
            found.append((m.start(), dtype))
    found.sort()
    types = list(dict.fromkeys(t for _, t in found))
    if len(types) > 1 and "clean" in types:
        types.remove("clean")
    return types


def severity_word(severity: float) -> str:
    """'mild', 'moderate' or 'heavy' for a severity in [0, 1]."""
    for bound, word in SEVERITY_WORDS:
        if severity < bound:
            return word
    return SEVERITY_WORDS[-1][1]


def describe(items: Iterable[tuple[str, float, str]]) -> str:
    """One canonical sentence from (type, severity in [0,1], detail) triples, strongest first.

    ``describe([("rain", .8, ""), ("noise", .2, "σ≈12")])`` → ``"heavy rain streaks, mild noise (σ≈12)"``.
    """
    parts = []
    for dtype, severity, detail in sorted(items, key=lambda x: -x[1]):
        check_type(dtype)
        if dtype == "clean":
            continue
        text = f"{severity_word(severity)} {_NOUN[dtype]}"
        parts.append(f"{text} ({detail})" if detail else text)
    return ", ".join(parts) if parts else "clean"


def one_hot(types: Iterable[str]) -> list[float]:
    """Multi-hot vector over DEGRADATION_TYPES (the order of the restorer's degradation vector)."""
    chosen = {check_type(t) for t in types}
    return [1.0 if t in chosen else 0.0 for t in DEGRADATION_TYPES]
