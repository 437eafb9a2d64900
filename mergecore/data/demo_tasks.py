"""Deterministic synthetic demo tasks: five English text-classification problems.

Every task is generated from templates and small vocabularies with a seeded ``random.Random``
(stdlib only, no data files, no network). The five tasks deliberately differ in input
distribution so that LoRA experts trained on each of them interfere when merged:

* ``sentiment``      -- short product / movie reviews with negations and contrasts
* ``topic``          -- news headlines (world / sports / business / science)
* ``acceptability``  -- grammatical vs corrupted sentences from a tiny grammar (metric: MCC)
* ``paraphrase``     -- sentence pairs: rewordings vs hard negatives sharing most words
* ``entailment``     -- premise / hypothesis pairs: generalisations vs contradictions or
  unsupported additions

``demo_tasks`` returns the ``TaskSet`` (labeled calibration and evaluation splits) plus a
labeled training split per task. The three splits of a task are disjoint on the exact input
tuple and every split is exactly class-balanced (up to one example when the size is not a
multiple of the number of classes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.errors import MergecoreError

Fields = tuple[str, ...]
Generator = Callable[[random.Random, int], Fields]

_MAX_TRIES = 200  # attempts to draw an unseen input before giving up


# ----------------------------------------------------------------------------- shared helpers


def _pick(rng: random.Random, seq: Sequence):
    return seq[rng.randrange(len(seq))]


def _an(word: str) -> str:
    """``a`` or ``an`` for the word that follows."""
    return "an" if word[0].lower() in "aeiou" else "a"


def _sentence(text: str) -> str:
    """Capitalise the first letter and end with a period."""
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _fresh(rng: random.Random, gen: Generator, label: int, seen: set[Fields]) -> Fields:
    """Draw an input of class ``label`` that no split has used yet."""
    for _ in range(_MAX_TRIES):
        fields = gen(rng, label)
        if fields not in seen:
            seen.add(fields)
            return fields
    raise MergecoreError(
        f"demo generator ran out of unique inputs for label {label}; ask for fewer examples"
    )


def _split(rng: random.Random, gen: Generator, n_labels: int, n: int, seen: set[Fields]) -> Split:
    """A class-balanced split of ``n`` unseen examples, in shuffled order."""
    labels = [i % n_labels for i in range(n)]
    rng.shuffle(labels)
    inputs = tuple(_fresh(rng, gen, y, seen) for y in labels)
    return Split(inputs, tuple(labels))


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
    return _pick(rng, _POS_ADJ if positive else _NEG_ADJ)


def _review_core(rng: random.Random, y: int) -> str:
    """One evaluative sentence about a product whose polarity is ``y`` (1 = positive)."""
    thing = f"{_pick(rng, ('this', 'the', 'my new', 'our'))} {_pick(rng, _PRODUCTS)}"
    pos, style = bool(y), rng.randrange(4)
    if style == 0:
        return f"{thing} is {_pick(rng, _DEGREE)}{_adj(rng, pos)}"
    if style == 1:  # negation flips the adjective's polarity
        frame = _pick(rng, ("{t} is not {a} at all", "{t} was not very {a}", "{t} was far from {a}",
                            "{t} is anything but {a}", "{t} never felt {a}"))
        return frame.format(t=thing, a=_adj(rng, not pos))
    if style == 2:  # the clause after the contrast decides
        frame = _pick(rng, ("I expected {t} to be {b}, but it was {a}",
                            "at first {t} seemed {b}, yet in the end it was {a}",
                            "although the {x} is {b}, {t} is {a} overall"))
        return frame.format(t=thing, a=_adj(rng, pos), b=_adj(rng, not pos), x=_pick(rng, _ASPECTS))
    return _pick(rng, _POS_VERB if pos else _NEG_VERB).format(t=thing)


def _gen_sentiment(rng: random.Random, y: int) -> Fields:
    core = _review_core(rng, y)
    opener = _pick(rng, _OPENERS)
    core = _sentence(opener + core if opener else core)
    filler = _pick(rng, _FILLERS)
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


def _gen_topic(rng: random.Random, y: int) -> Fields:
    c, c2 = rng.sample(_COUNTRIES, 2)
    team, team2 = rng.sample(_TEAMS, 2)
    co, co2 = rng.sample(_COMPANIES, 2)
    values = {k: _pick(rng, v) for k, v in _SLOTS.items()}
    values.update(C=c, C2=c2, team=team, team2=team2, co=co, co2=co2, city=_pick(rng, _CITIES),
                  n=str(rng.randint(2, 40)))
    return (_pick(rng, _HEADLINES[y]).format(**values),)


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
    noun = _pick(rng, nouns)[int(plural)]
    det = _pick(rng, _DET_PL if plural else _DET_SG)
    adj = _pick(rng, _ADJS) if rng.random() < 0.4 else ""
    if det == "a":
        det = _an(adj or noun)
    return [(det, "DET")] + ([(adj, "ADJ")] if adj else []) + [(noun, "N")]


def _grammatical(rng: random.Random) -> tuple[Tagged, bool, str]:
    """A tagged grammatical clause, whether its subject is plural, and its tense."""
    plural = rng.random() < 0.5
    verb = _pick(rng, _TRANSITIVE if rng.random() < 0.6 else _INTRANSITIVE)
    tense = _pick(rng, ("present", "present", "past", "progressive", "past_progressive"))
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
        words += list(_pick(rng, _PPS))
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
    kind = _pick(rng, ("agree", "agree", "det", "swap", "swap", "drop", "dup"))
    if kind == "agree" and (broken := _break_agreement(words, plural, tense)):
        return broken
    if kind == "det":
        det = _pick(rng, _DET_SG_ONLY if plural else _DET_PL_ONLY)
        return [(det, "DET")] + words[1:]
    swaps = [i for i in range(len(words) - 1) if (words[i][1], words[i + 1][1]) in _BAD_SWAPS]
    if kind in ("swap", "agree") and swaps:
        i = _pick(rng, swaps)
        return words[:i] + [words[i + 1], words[i]] + words[i + 2:]
    if kind == "drop":
        has_aux = any(t == "AUX" for _, t in words)  # "was holding" minus the verb is a copula
        targets = [i for i, (_, t) in enumerate(words) if t == ("AUX" if has_aux else "V")]
        if not plural:
            targets.append(0)  # "dog runs" without its determiner
        i = _pick(rng, targets)
        return words[:i] + words[i + 1:]
    i = _pick(rng, [i for i, (w, t) in enumerate(words) if t in ("DET", "AUX", "V", "P") and w != "many"])
    return words[:i + 1] + words[i:]


def _gen_acceptability(rng: random.Random, y: int) -> Fields:
    words, plural, tense = _grammatical(rng)
    if y == 0:
        words = _corrupt(rng, words, plural, tense)
    return (_sentence(" ".join(w for w, _ in words)),)


# ----------------------------------------------------------------------------- paraphrase

# each entry lists interchangeable wordings; verbs are (past, base, participle) per wording
_PEOPLE = (("teacher", "instructor"), ("doctor", "physician"), ("chef", "cook"),
           ("lawyer", "attorney"), ("student", "pupil"), ("manager", "boss"),
           ("child", "kid"), ("writer", "author"), ("officer", "policeman"),
           ("customer", "client"), ("neighbor", "neighbour"), ("journalist", "reporter"))
_THINGS = (("car", "vehicle"), ("house", "home"), ("report", "document"), ("bike", "bicycle"),
           ("phone", "telephone"), ("painting", "picture"), ("gift", "present"),
           ("shop", "store"), ("couch", "sofa"), ("boat", "ship"), ("laptop", "notebook computer"))
_PERSON_VERBS = ((("helped", "help", "helped"), ("assisted", "assist", "assisted")),
                 (("called", "call", "called"), ("phoned", "phone", "phoned")),
                 (("praised", "praise", "praised"), ("complimented", "compliment", "complimented")),
                 (("hired", "hire", "hired"), ("employed", "employ", "employed")),
                 (("warned", "warn", "warned"), ("cautioned", "caution", "cautioned")),
                 (("chose", "choose", "chosen"), ("selected", "select", "selected")),
                 (("taught", "teach", "taught"), ("instructed", "instruct", "instructed")))
_THING_VERBS = ((("bought", "buy", "bought"), ("purchased", "purchase", "purchased")),
                (("fixed", "fix", "fixed"), ("repaired", "repair", "repaired")),
                (("built", "build", "built"), ("constructed", "construct", "constructed")),
                (("found", "find", "found"), ("discovered", "discover", "discovered")),
                (("cleaned", "clean", "cleaned"), ("washed", "wash", "washed")),
                (("examined", "examine", "examined"), ("inspected", "inspect", "inspected")),
                (("sold", "sell", "sold"), ("sold off", "sell off", "sold off")))
_TIMES = (("this morning", "earlier this morning"), ("last week", "the previous week"),
          ("on Friday", "on Friday"), ("after lunch", "after lunchtime"),
          ("last night", "yesterday evening"), ("in March", "in March"), ("", ""))
Event = tuple[int, int, int, bool, bool, int]  # agent, verb, object, object is a person, negated, time


def _random_event(rng: random.Random) -> Event:
    person_obj = rng.random() < 0.5
    agent, obj = rng.sample(range(len(_PEOPLE)), 2) if person_obj else (
        rng.randrange(len(_PEOPLE)), rng.randrange(len(_THINGS)))
    verbs = _PERSON_VERBS if person_obj else _THING_VERBS
    return agent, rng.randrange(len(verbs)), obj, person_obj, rng.random() < 0.25, rng.randrange(len(_TIMES))


def _render(rng: random.Random, event: Event) -> str:
    """One surface form of an event: random synonyms, voice and position of the time phrase."""
    agent, verb, obj, person_obj, negated, time = event
    syn = lambda options: options[rng.randrange(len(options))]  # noqa: E731
    a = "the " + syn(_PEOPLE[agent])
    o = "the " + syn(_PEOPLE[obj] if person_obj else _THINGS[obj])
    past, base, part = syn((_PERSON_VERBS if person_obj else _THING_VERBS)[verb])
    if rng.random() < 0.5:
        core = f"{a} did not {base} {o}" if negated else f"{a} {past} {o}"
    else:
        core = f"{o} was {'not ' if negated else ''}{part} by {a}"
    when = syn(_TIMES[time])
    if not when:
        return _sentence(core)
    return _sentence(f"{when}, {core}" if rng.random() < 0.4 else f"{core} {when}")


def _perturb(rng: random.Random, event: Event) -> Event:
    """A different event sharing most words: new agent/object/verb, swapped roles, negation, time."""
    agent, verb, obj, person_obj, negated, time = event
    kind = _pick(rng, ("agent", "object", "verb", "roles", "negate", "time") if person_obj
                 else ("agent", "object", "verb", "negate", "time"))
    others = lambda n, *bad: _pick(rng, [i for i in range(n) if i not in bad])  # noqa: E731
    if kind == "agent":
        agent = others(len(_PEOPLE), agent, obj if person_obj else -1)
    elif kind == "object":
        obj = others(len(_PEOPLE), agent, obj) if person_obj else others(len(_THINGS), obj)
    elif kind == "verb":
        verb = others(len(_PERSON_VERBS if person_obj else _THING_VERBS), verb)
    elif kind == "roles":
        agent, obj = obj, agent
    elif kind == "negate":
        negated = not negated
    else:
        time = others(len(_TIMES) - 1, time)  # a different, explicit time
    return agent, verb, obj, person_obj, negated, time


def _gen_paraphrase(rng: random.Random, y: int) -> Fields:
    event = _random_event(rng)
    first = _render(rng, event)
    other = event if y == 1 else _perturb(rng, event)
    for _ in range(20):
        second = _render(rng, other)
        if second != first:
            break
    return first, second


# ----------------------------------------------------------------------------- entailment

# person -> (more general wordings, a contradicting person)
_PERSONS = {"man": (("person", "adult"), "woman"), "woman": (("person", "adult"), "man"),
            "boy": (("child", "kid", "person"), "girl"), "girl": (("child", "kid", "person"), "boy"),
            "chef": (("person", "adult"), "child"), "police officer": (("person", "officer"), "child"),
            "musician": (("person", "performer"), "child"), "grandmother": (("woman", "person"), "boy")}
_PERSON_ADJS = ("tall", "young", "smiling", "bearded", "tired", "cheerful", "elderly")
# verb -> {object: generalisations}; objects of one verb contradict each other
_ACTIVITIES: dict[str, dict[str, tuple[str, ...]]] = {
    "playing": {"a guitar": ("an instrument", "music"), "a violin": ("an instrument", "music"),
                "the piano": ("an instrument", "music"), "a drum": ("an instrument", "music")},
    "eating": {"an apple": ("fruit", "food", "something"), "a banana": ("fruit", "food", "something"),
               "a sandwich": ("food", "something"), "a slice of pizza": ("food", "something")},
    "riding": {"a bicycle": ("a vehicle", "something"), "a horse": ("an animal", "something"),
               "a motorcycle": ("a vehicle", "something"), "a skateboard": ("a board", "something")},
    "reading": {"a novel": ("a book", "something"), "a newspaper": ("something",),
                "a magazine": ("something",), "a letter": ("something",)},
    "drinking": {"a cup of coffee": ("a drink", "a beverage", "something"),
                 "a glass of juice": ("a drink", "a beverage", "something"),
                 "a cup of tea": ("a drink", "a beverage", "something")},
    "walking": {"a dog": ("an animal", "a pet"), "a goat": ("an animal",), "a pony": ("an animal",)},
}
_PLACES = {"in the park": "outdoors", "on the beach": "outdoors", "on a busy street": "outdoors",
           "in a field": "outdoors", "in the kitchen": "indoors", "in a library": "indoors",
           "in a living room": "indoors", "in a cafe": "indoors"}
_EXTRAS = ("for a crowd", "for money", "with a friend", "at night", "in the rain", "for the first time")
Scene = dict[str, str]


def _random_scene(rng: random.Random) -> Scene:
    verb = _pick(rng, list(_ACTIVITIES))
    return {"adj": _pick(rng, _PERSON_ADJS) if rng.random() < 0.4 else "",
            "person": _pick(rng, list(_PERSONS)), "verb": verb, "obj": _pick(rng, list(_ACTIVITIES[verb])),
            "place": _pick(rng, list(_PLACES)) if rng.random() < 0.8 else "", "neg": "", "extra": ""}


def _describe(scene: Scene) -> str:
    head = f"{scene['adj']} {scene['person']}".strip()
    parts = [_an(head), head, "is", scene["neg"], scene["verb"], scene["obj"], scene["place"], scene["extra"]]
    return _sentence(" ".join(p for p in parts if p))


def _generalise(rng: random.Random, p: Scene) -> Scene:
    """A hypothesis the premise entails: at least one edit that loses information."""
    h = dict(p)
    edits = [e for e in ("adj", "person", "obj", "place", "drop_place") if e != "adj" or p["adj"]]
    if not p["place"]:
        edits = [e for e in edits if e not in ("place", "drop_place")]
    for edit in rng.sample(edits, rng.randint(1, min(3, len(edits)))):
        if edit == "adj":
            h["adj"] = ""
        elif edit == "person":
            h["person"] = _pick(rng, _PERSONS[p["person"]][0])
        elif edit == "obj":
            h["obj"] = _pick(rng, _ACTIVITIES[p["verb"]][p["obj"]])
        elif edit == "place":
            h["place"] = _PLACES[p["place"]]
        elif h["place"] == p["place"]:
            h["place"] = ""
    return h


def _contradict_or_add(rng: random.Random, p: Scene) -> Scene:
    """A hypothesis the premise does not entail: a contradiction or unsupported information."""
    h = _generalise(rng, p) if rng.random() < 0.5 else dict(p)
    kind = _pick(rng, ("obj", "person", "neg", "place", "adj", "extra"))
    if kind == "obj":
        h["obj"] = _pick(rng, [o for o in _ACTIVITIES[p["verb"]] if o != p["obj"]])
    elif kind == "person":
        h["person"], h["adj"] = _PERSONS[p["person"]][1], ""
    elif kind == "neg":
        h["neg"] = "not"
    elif kind == "place" and p["place"]:
        wrong = "indoors" if _PLACES[p["place"]] == "outdoors" else "outdoors"
        h["place"] = _pick(rng, [wrong] + [q for q, k in _PLACES.items() if k == wrong])
    elif kind == "adj" and not p["adj"]:
        h["adj"] = _pick(rng, _PERSON_ADJS)
    else:
        h["extra"] = _pick(rng, _EXTRAS)
    return h


def _gen_entailment(rng: random.Random, y: int) -> Fields:
    premise = _random_scene(rng)
    if y == 1:
        return _describe(premise), _describe(_generalise(rng, premise))
    if rng.random() < 0.3:  # reversed direction: the general scene does not entail the specific one
        return _describe(_generalise(rng, premise)), _describe(premise)
    return _describe(premise), _describe(_contradict_or_add(rng, premise))


# ----------------------------------------------------------------------------- assembly

_SPECS: tuple[dict, ...] = (
    dict(name="sentiment", gen=_gen_sentiment, label_names=("negative", "positive"),
         field_names=("review",), prompt="Review: {0}\nSentiment:", verbalizers=("negative", "positive"),
         description="Short product and movie reviews; negations and contrasts decide polarity."),
    dict(name="topic", gen=_gen_topic, label_names=("world", "sports", "business", "science"),
         field_names=("headline",), prompt="Headline: {0}\nTopic:",
         verbalizers=("world", "sports", "business", "science"),
         description="News headlines classified into world, sports, business or science."),
    dict(name="acceptability", gen=_gen_acceptability, label_names=("unacceptable", "acceptable"),
         field_names=("sentence",), prompt="Sentence: {0}\nIs this sentence grammatical?",
         metric="matthews", verbalizers=("no", "yes"),
         description="Grammatical sentences vs corrupted ones (agreement, word order, dropped or "
                     "duplicated words)."),
    dict(name="paraphrase", gen=_gen_paraphrase, label_names=("not_paraphrase", "paraphrase"),
         field_names=("sentence1", "sentence2"),
         prompt="Sentence 1: {0}\nSentence 2: {1}\nDo they mean the same thing?",
         verbalizers=("no", "yes"),
         description="Sentence pairs: rewordings (synonyms, voice, clause order) vs hard negatives "
                     "that change a participant, the verb, the roles, the negation or the time."),
    dict(name="entailment", gen=_gen_entailment, label_names=("not_entailment", "entailment"),
         field_names=("premise", "hypothesis"),
         prompt="Premise: {0}\nHypothesis: {1}\nDoes the premise entail the hypothesis?",
         verbalizers=("no", "yes"),
         description="Premise/hypothesis pairs: generalisations vs contradictions or unsupported "
                     "additions."),
)


def demo_tasks(n_calibration: int = 256, n_evaluation: int = 200, n_train: int = 1000,
               seed: int = 0) -> tuple[TaskSet, dict[str, Split]]:
    """The five demo tasks and a labeled training split per task.

    Evaluation is drawn first, then calibration, then training, each from a per-task generator
    seeded with ``seed``, so the evaluation split does not depend on the other sizes.
    """
    if min(n_calibration, n_evaluation) < 1 or n_train < 0:
        raise MergecoreError("demo_tasks needs n_calibration >= 1, n_evaluation >= 1, n_train >= 0")
    tasks, train = [], {}
    for spec in _SPECS:
        rng = random.Random(f"mergecore-demo:{seed}:{spec['name']}")
        gen, k, seen = spec["gen"], len(spec["label_names"]), set()
        evaluation = _split(rng, gen, k, n_evaluation, seen)
        calibration = _split(rng, gen, k, n_calibration, seen)
        train[spec["name"]] = _split(rng, gen, k, n_train, seen)
        tasks.append(Task(name=spec["name"], label_names=spec["label_names"], calibration=calibration,
                          evaluation=evaluation, metric=spec.get("metric", "accuracy"),
                          prompt=spec["prompt"], verbalizers=spec["verbalizers"],
                          field_names=spec["field_names"], description=spec["description"]))
    return TaskSet(tuple(tasks)), train


def demo_taskset() -> TaskSet:
    tasks, _ = demo_tasks()
    return tasks


def tasks_for(adapter_names: list[str]) -> TaskSet:
    """Demo tasks matching adapter names (adapters named after demo tasks), in adapter order."""
    tasks = demo_taskset()
    unknown = [n for n in adapter_names if n not in tasks.names]
    if unknown:
        raise MergecoreError(
            f"no tasks known for adapters {unknown}; name adapter folders after demo tasks "
            f"({', '.join(tasks.names)}), or pass GLUE tasks with --glue TASK ... --glue-dir DIR"
        )
    return TaskSet(tuple(tasks.by_name(n) for n in adapter_names))
