"""Demo task text, one sentence per input: reviews (sentiment), news headlines (topic) and sentences from a
tiny grammar, grammatical or corrupted (acceptability). Templates and small vocabularies drawn with a seeded
``random.Random``; ``demo_tasks`` assembles the tasks."""

from __future__ import annotations

import random
from collections.abc import Sequence

Fields = tuple[str, ...]


def pick(rng: random.Random, seq: Sequence):
    return seq[rng.randrange(len(seq))]


def article(word: str) -> str:
    """``a`` or ``an`` for the word that follows."""
    return "an" if word[0].lower() in "aeiou" else "a"


def sentence(text: str) -> str:
    """Capitalise the first letter and end with a period."""
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


# ----------------------------------------------------------------------------- sentiment

_PRODUCTS = ("movie", "film", "sequel", "documentary", "thriller", "comedy", "novel", "album",
             "laptop", "blender", "phone", "jacket", "backpack", "coffee maker", "vacuum cleaner",
             "hotel", "restaurant", "video game", "camera", "keyboard", "mattress", "tent",
             "watch", "soundtrack", "printer", "toaster", "series finale", "board game")
_POS_ADJ = ("great", "wonderful", "excellent", "delightful", "superb", "fantastic", "impressive",
            "charming", "reliable", "brilliant", "enjoyable", "solid", "gripping", "sturdy")
_NEG_ADJ = ("terrible", "awful", "disappointing", "dull", "flimsy", "boring", "mediocre",
            "useless", "clumsy", "tedious", "poor", "unreliable", "forgettable", "overpriced")
_DEGREE = ("", "", "really ", "very ", "quite ", "truly ", "pretty ", "genuinely ")
_POS_VERB = ("I loved {t}", "I enjoyed {t}", "I adored {t}", "I would happily recommend {t}",
             "I would buy {t} again", "I have no regrets about {t}", "I can't recommend {t} enough",
             "I was pleasantly surprised by {t}", "nothing about {t} let me down")
_NEG_VERB = ("I hated {t}", "I regretted buying {t}", "I returned {t}", "I would avoid {t}",
             "I gave up on {t}", "I would not recommend {t}", "I wasted my money on {t}",
             "I was let down by {t}", "nothing about {t} impressed me")
_ASPECTS = ("price", "packaging", "ending", "menu", "design", "opening scene", "manual", "color")
_FILLERS = ("I bought it last month.", "It arrived on a Tuesday.", "My friend recommended it.",
            "I watched it with my family.", "I have used it every day since.",
            "We tried it over the weekend.", "This is my second review here.", "")
_OPENERS = ("", "", "Honestly, ", "Overall, ", "To be fair, ", "In short, ", "Well, ")


def _adj(rng: random.Random, positive: bool) -> str:
    return pick(rng, _POS_ADJ if positive else _NEG_ADJ)


def _review_core(rng: random.Random, y: int) -> str:
    """One evaluative sentence about a product whose polarity is ``y`` (1 = positive)."""
    thing = f"{pick(rng, ('this', 'the', 'my new', 'our'))} {pick(rng, _PRODUCTS)}"
    pos, style = bool(y), rng.randrange(4)
    if style == 0:
        return f"{thing} is {pick(rng, _DEGREE)}{_adj(rng, pos)}"
    if style == 1:  # negation flips the adjective's polarity
        frame = pick(rng, ("{t} is not {a} at all", "{t} was not very {a}", "{t} was far from {a}",
                            "{t} is anything but {a}", "{t} never felt {a}"))
        return frame.format(t=thing, a=_adj(rng, not pos))
    if style == 2:  # the clause after the contrast decides
        frame = pick(rng, ("I expected {t} to be {b}, but it was {a}",
                            "at first {t} seemed {b}, yet in the end it was {a}",
                            "although the {x} is {b}, {t} is {a} overall"))
        return frame.format(t=thing, a=_adj(rng, pos), b=_adj(rng, not pos), x=pick(rng, _ASPECTS))
    return pick(rng, _POS_VERB if pos else _NEG_VERB).format(t=thing)


def gen_sentiment(rng: random.Random, y: int) -> Fields:
    core = _review_core(rng, y)
    opener = pick(rng, _OPENERS)
    core = sentence(opener + core if opener else core)
    filler = pick(rng, _FILLERS)
    text = f"{filler} {core}" if rng.random() < 0.5 else f"{core} {filler}"
    return (text.strip(),)


# ----------------------------------------------------------------------------- topic

_COUNTRIES = ("France", "Brazil", "Japan", "Kenya", "Canada", "India", "Germany", "Mexico",
              "Egypt", "Australia", "Spain", "Norway", "Chile", "Vietnam", "Poland", "Ghana")
_CITIES = ("Paris", "Nairobi", "Tokyo", "Lima", "Berlin", "Cairo", "Oslo", "Madrid", "Delhi",
           "Toronto", "Seoul", "Warsaw", "Accra", "Hanoi")
_TEAMS = ("United", "Rovers", "City", "Athletic", "the Eagles", "the Tigers", "the Sharks",
          "the Falcons", "Wanderers", "the Giants", "the Comets", "Real")
_COMPANIES = ("Acme Corp", "Globex", "Initech", "Vandelay Industries", "Northwind", "Umbrella Group",
              "Stark Holdings", "Hooli", "Soylent", "Wayne Enterprises", "Tyrell", "Cyberdyne")
_HEADLINES: dict[int, tuple[str, ...]] = {
    0: ("{C} and {C2} agree to {dip} after talks in {city}",
        "{leader} of {C} visits {city} amid {crisis}",
        "Thousands protest in {city} over {issue}",
        "UN warns of {crisis} in {C} as {issue} deepens",
        "{C} recalls ambassador from {C2} over {issue}",
        "Election in {C} heads to runoff as opposition gains",
        "{leader} of {C} survives confidence vote over {issue}"),
    1: ("{team} beat {team2} {score} to reach {comp} final",
        "{C} striker scores twice as {team} rout {team2}",
        "{team} sack coach after {n} straight defeats",
        "Injury rules {C} captain out of {comp}",
        "{C} clinch gold in {event} on final day in {city}",
        "{team} and {team2} draw {score} in {comp} opener",
        "Veteran {C} sprinter retires after {n} world titles"),
    2: ("{co} shares {move} {n}% after quarterly earnings",
        "{co} to buy {co2} in {n} billion dollar deal",
        "{C} central bank {rate} interest rates to curb inflation",
        "{co} to cut {n}00 jobs as sales slow in {C}",
        "Oil prices {move} as {C} output {move}s",
        "{co} profit beats forecasts on strong demand in {city}",
        "Investors dump {co} stock after {issue} probe"),
    3: ("{C} researchers discover {find} in {place}",
        "{agency} to launch probe to {planet} in {year}",
        "New study links {cause} to {effect} in {group}",
        "Scientists in {city} sequence genome of {organism}",
        "Telescope spots {astro} {n} million light-years away",
        "Physicists in {city} observe {phys} for first time",
        "{C} team develops vaccine candidate against {disease}"),
}
_SLOTS: dict[str, tuple[str, ...]] = {
    "dip": ("ceasefire", "prisoner exchange", "border deal", "peace plan", "trade pact"),
    "leader": ("President", "Prime Minister", "Foreign Minister", "Defence Minister"),
    "crisis": ("refugee crisis", "border tensions", "famine", "civil unrest", "coup fears"),
    "issue": ("fuel prices", "corruption claims", "election fraud", "water shortages",
              "new tax law", "media crackdown"),
    "score": ("2-1", "3-0", "1-0", "4-2", "2-2", "0-0", "3-1"),
    "comp": ("cup", "league", "Champions League", "World Cup", "Olympic", "continental"),
    "event": ("rowing", "the marathon", "cycling", "swimming relay", "the long jump", "judo"),
    "move": ("jump", "slide", "rise", "fall", "surge", "slump"),
    "rate": ("raises", "cuts", "holds", "hikes"),
    "find": ("new frog species", "ancient fossils", "a hidden cave system", "microbial life",
             "a lost Roman city", "giant crystals", "dinosaur footprints", "a new mineral",
             "glowing fungi", "a buried meteorite"),
    "place": ("the Amazon", "Antarctic ice", "the deep sea", "the Sahara", "a volcanic lake",
              "Arctic permafrost", "a limestone cave", "the Andes"),
    "agency": ("NASA", "ESA", "JAXA", "ISRO", "the Chinese space agency"),
    "planet": ("Mars", "Jupiter's moon Europa", "Venus", "a near-Earth asteroid", "Saturn",
               "the Moon's south pole", "Mercury"),
    "year": ("2027", "2028", "2029", "2030", "2031", "2032"),
    "cause": ("poor sleep", "air pollution", "coffee", "gut bacteria", "screen time",
              "a gene variant", "loud noise", "vitamin D"),
    "effect": ("memory loss", "heart disease", "longer life", "asthma", "obesity",
               "faster healing", "hearing loss"),
    "group": ("children", "older adults", "mice", "teenagers", "twins", "night-shift workers"),
    "organism": ("the axolotl", "a giant tortoise", "wheat", "the octopus", "a deep-sea worm"),
    "astro": ("a rogue planet", "merging black holes", "a new comet", "a distant galaxy"),
    "phys": ("a new particle", "quantum entanglement", "time crystals", "dark matter signals"),
    "disease": ("malaria", "dengue", "tuberculosis", "a new flu strain"),
}


def gen_topic(rng: random.Random, y: int) -> Fields:
    c, c2 = rng.sample(_COUNTRIES, 2)
    team, team2 = rng.sample(_TEAMS, 2)
    co, co2 = rng.sample(_COMPANIES, 2)
    values = {k: pick(rng, v) for k, v in _SLOTS.items()}
    values.update(C=c, C2=c2, team=team, team2=team2, co=co, co2=co2, city=pick(rng, _CITIES),
                  n=str(rng.randint(2, 40)))
    return (pick(rng, _HEADLINES[y]).format(**values),)


# ----------------------------------------------------------------------------- acceptability

_SUBJ_NOUNS = (("dog", "dogs"), ("cat", "cats"), ("child", "children"), ("teacher", "teachers"),
               ("student", "students"), ("farmer", "farmers"), ("bird", "birds"),
               ("woman", "women"), ("man", "men"), ("doctor", "doctors"), ("artist", "artists"),
               ("neighbor", "neighbors"))
_OBJ_NOUNS = (("book", "books"), ("ball", "balls"), ("letter", "letters"), ("apple", "apples"),
              ("car", "cars"), ("song", "songs"), ("box", "boxes"), ("picture", "pictures"),
              ("orange", "oranges"), ("umbrella", "umbrellas"))
_ADJS = ("big", "small", "old", "young", "happy", "quiet", "clever", "tired", "friendly",
         "noisy", "angry", "red")
# verb forms: (3rd person singular, base, past, -ing); transitive verbs take an object
_TRANSITIVE = (("throws", "throw", "threw", "throwing"), ("opens", "open", "opened", "opening"),
               ("finds", "find", "found", "finding"), ("carries", "carry", "carried", "carrying"),
               ("drops", "drop", "dropped", "dropping"), ("watches", "watch", "watched", "watching"),
               ("holds", "hold", "held", "holding"), ("brings", "bring", "brought", "bringing"))
_INTRANSITIVE = (("sleeps", "sleep", "slept", "sleeping"), ("runs", "run", "ran", "running"),
                 ("laughs", "laugh", "laughed", "laughing"), ("waits", "wait", "waited", "waiting"),
                 ("sings", "sing", "sang", "singing"), ("smiles", "smile", "smiled", "smiling"))
_DET_SG = ("the", "a", "this", "that", "every", "my", "our")
_DET_PL = ("the", "these", "those", "some", "many", "two", "my", "our")
_DET_SG_ONLY = ("a", "this", "that", "every", "each")
_DET_PL_ONLY = ("these", "those", "many", "several", "two")
_PPS = ((("in", "P"), ("the", "DET"), ("garden", "N")), (("near", "P"), ("the", "DET"), ("river", "N")),
        (("after", "P"), ("lunch", "N")), (("at", "P"), ("home", "N")),
        (("on", "P"), ("the", "DET"), ("bus", "N")), (("every", "DET"), ("morning", "N")))
_BAD_SWAPS = {("DET", "N"), ("DET", "ADJ"), ("N", "V"), ("N", "AUX"), ("AUX", "V"),
              ("V", "DET"), ("P", "DET"), ("P", "N")}
Tagged = list[tuple[str, str]]


def _noun_phrase(rng: random.Random, nouns: Sequence[tuple[str, str]], plural: bool) -> Tagged:
    noun = pick(rng, nouns)[int(plural)]
    det = pick(rng, _DET_PL if plural else _DET_SG)
    adj = pick(rng, _ADJS) if rng.random() < 0.4 else ""
    if det == "a":
        det = article(adj or noun)
    return [(det, "DET")] + ([(adj, "ADJ")] if adj else []) + [(noun, "N")]


def _grammatical(rng: random.Random) -> tuple[Tagged, bool, str]:
    """A tagged grammatical clause, whether its subject is plural, and its tense."""
    plural = rng.random() < 0.5
    verb = pick(rng, _TRANSITIVE if rng.random() < 0.6 else _INTRANSITIVE)
    tense = pick(rng, ("present", "present", "past", "progressive", "past_progressive"))
    if tense == "present":
        vp = [(verb[1] if plural else verb[0], "V")]
    elif tense == "past":
        vp = [(verb[2], "V")]
    else:
        aux = {"progressive": ("is", "are"), "past_progressive": ("was", "were")}[tense]
        vp = [(aux[int(plural)], "AUX"), (verb[3], "V")]
    words = _noun_phrase(rng, _SUBJ_NOUNS, plural) + vp
    if verb in _TRANSITIVE:
        words += _noun_phrase(rng, _OBJ_NOUNS, rng.random() < 0.5)
    if rng.random() < 0.4:
        words += list(pick(rng, _PPS))
    return words, plural, tense


def _break_agreement(words: Tagged, plural: bool, tense: str) -> Tagged | None:
    """``the dogs runs`` / ``the dog are sleeping``; None when the tense shows no agreement."""
    flip = {"is": "are", "are": "is", "was": "were", "were": "was"}
    for i, (w, tag) in enumerate(words):
        if tag == "AUX":
            return words[:i] + [(flip[w], "AUX")] + words[i + 1:]
        if tag == "V" and tense == "present":
            forms = next(v for v in _TRANSITIVE + _INTRANSITIVE if w in v[:2])
            return words[:i] + [(forms[0] if plural else forms[1], "V")] + words[i + 1:]
    return None


def _corrupt(rng: random.Random, words: Tagged, plural: bool, tense: str) -> Tagged:
    """An ungrammatical variant: agreement, determiner number, word order, drop or duplicate."""
    kind = pick(rng, ("agree", "agree", "det", "swap", "swap", "drop", "dup"))
    if kind == "agree" and (broken := _break_agreement(words, plural, tense)):
        return broken
    if kind == "det":
        det = pick(rng, _DET_SG_ONLY if plural else _DET_PL_ONLY)
        return [(det, "DET")] + words[1:]
    swaps = [i for i in range(len(words) - 1) if (words[i][1], words[i + 1][1]) in _BAD_SWAPS]
    if kind in ("swap", "agree") and swaps:
        i = pick(rng, swaps)
        return words[:i] + [words[i + 1], words[i]] + words[i + 2:]
    if kind == "drop":
        has_aux = any(t == "AUX" for _, t in words)  # "was holding" minus the verb is a copula
        targets = [i for i, (_, t) in enumerate(words) if t == ("AUX" if has_aux else "V")]
        if not plural:
            targets.append(0)  # "dog runs" without its determiner
        i = pick(rng, targets)
        return words[:i] + words[i + 1:]
    i = pick(rng, [i for i, (w, t) in enumerate(words) if t in ("DET", "AUX", "V", "P") and w != "many"])
    return words[:i + 1] + words[i:]


def gen_acceptability(rng: random.Random, y: int) -> Fields:
    words, plural, tense = _grammatical(rng)
    if y == 0:
        words = _corrupt(rng, words, plural, tense)
    return (sentence(" ".join(w for w, _ in words)),)
