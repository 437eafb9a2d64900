"""Demo task text, sentence pairs: paraphrases vs hard negatives (paraphrase) and premise / hypothesis pairs
(entailment). Templates and small vocabularies drawn with a seeded ``random.Random``."""

from __future__ import annotations

import random

from mergecore.data.demo_text import Fields, article, pick, sentence

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
        return sentence(core)
    return sentence(f"{when}, {core}" if rng.random() < 0.4 else f"{core} {when}")


def _perturb(rng: random.Random, event: Event) -> Event:
    """A different event sharing most words: new agent/object/verb, swapped roles, negation, time."""
    agent, verb, obj, person_obj, negated, time = event
    kind = pick(rng, ("agent", "object", "verb", "roles", "negate", "time") if person_obj
                 else ("agent", "object", "verb", "negate", "time"))
    others = lambda n, *bad: pick(rng, [i for i in range(n) if i not in bad])  # noqa: E731
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


def gen_paraphrase(rng: random.Random, y: int) -> Fields:
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
    verb = pick(rng, list(_ACTIVITIES))
    return {"adj": pick(rng, _PERSON_ADJS) if rng.random() < 0.4 else "",
            "person": pick(rng, list(_PERSONS)), "verb": verb, "obj": pick(rng, list(_ACTIVITIES[verb])),
            "place": pick(rng, list(_PLACES)) if rng.random() < 0.8 else "", "neg": "", "extra": ""}


def _describe(scene: Scene) -> str:
    head = f"{scene['adj']} {scene['person']}".strip()
    parts = [article(head), head, "is", scene["neg"], scene["verb"], scene["obj"], scene["place"], scene["extra"]]
    return sentence(" ".join(p for p in parts if p))


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
            h["person"] = pick(rng, _PERSONS[p["person"]][0])
        elif edit == "obj":
            h["obj"] = pick(rng, _ACTIVITIES[p["verb"]][p["obj"]])
        elif edit == "place":
            h["place"] = _PLACES[p["place"]]
        elif h["place"] == p["place"]:
            h["place"] = ""
    return h


def _contradict_or_add(rng: random.Random, p: Scene) -> Scene:
    """A hypothesis the premise does not entail: a contradiction or unsupported information."""
    h = _generalise(rng, p) if rng.random() < 0.5 else dict(p)
    kind = pick(rng, ("obj", "person", "neg", "place", "adj", "extra"))
    if kind == "obj":
        h["obj"] = pick(rng, [o for o in _ACTIVITIES[p["verb"]] if o != p["obj"]])
    elif kind == "person":
        h["person"], h["adj"] = _PERSONS[p["person"]][1], ""
    elif kind == "neg":
        h["neg"] = "not"
    elif kind == "place" and p["place"]:
        wrong = "indoors" if _PLACES[p["place"]] == "outdoors" else "outdoors"
        h["place"] = pick(rng, [wrong] + [q for q, k in _PLACES.items() if k == wrong])
    elif kind == "adj" and not p["adj"]:
        h["adj"] = pick(rng, _PERSON_ADJS)
    else:
        h["extra"] = pick(rng, _EXTRAS)
    return h


def gen_entailment(rng: random.Random, y: int) -> Fields:
    premise = _random_scene(rng)
    if y == 1:
        return _describe(premise), _describe(_generalise(rng, premise))
    if rng.random() < 0.3:  # reversed direction: the general scene does not entail the specific one
        return _describe(_generalise(rng, premise)), _describe(premise)
    return _describe(premise), _describe(_contradict_or_add(rng, premise))
