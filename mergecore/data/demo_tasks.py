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
from collections.abc import Callable

from mergecore.data.demo_pairs import gen_entailment, gen_paraphrase
from mergecore.data.demo_text import Fields, gen_acceptability, gen_sentiment, gen_topic
from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.errors import MergecoreError

Generator = Callable[[random.Random, int], Fields]

_MAX_TRIES = 200  # attempts to draw an unseen input before giving up


# ----------------------------------------------------------------------------- splits


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


# ----------------------------------------------------------------------------- assembly

_SPECS: tuple[dict, ...] = (
    dict(name="sentiment", gen=gen_sentiment, label_names=("negative", "positive"),
         field_names=("review",), prompt="Review: {0}\nSentiment:", verbalizers=("negative", "positive"),
         description="Short product and movie reviews; negations and contrasts decide polarity."),
    dict(name="topic", gen=gen_topic, label_names=("world", "sports", "business", "science"),
         field_names=("headline",), prompt="Headline: {0}\nTopic:",
         verbalizers=("world", "sports", "business", "science"),
         description="News headlines classified into world, sports, business or science."),
    dict(name="acceptability", gen=gen_acceptability, label_names=("unacceptable", "acceptable"),
         field_names=("sentence",), prompt="Sentence: {0}\nIs this sentence grammatical?",
         metric="matthews", verbalizers=("no", "yes"),
         description="Grammatical sentences vs corrupted ones (agreement, word order, dropped or "
                     "duplicated words)."),
    dict(name="paraphrase", gen=gen_paraphrase, label_names=("not_paraphrase", "paraphrase"),
         field_names=("sentence1", "sentence2"),
         prompt="Sentence 1: {0}\nSentence 2: {1}\nDo they mean the same thing?",
         verbalizers=("no", "yes"),
         description="Sentence pairs: rewordings (synonyms, voice, clause order) vs hard negatives "
                     "that change a participant, the verb, the roles, the negation or the time."),
    dict(name="entailment", gen=gen_entailment, label_names=("not_entailment", "entailment"),
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
