"""Tests for the deterministic synthetic demo tasks."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from mergecore.data.demo_tasks import demo_tasks
from mergecore.data.tasks import TaskSet

NAMES = ["sentiment", "topic", "acceptability", "paraphrase", "entailment"]
PAIRS = {"paraphrase", "entailment"}


@pytest.fixture(scope="module")
def default():
    return demo_tasks()


def test_names_metrics_and_metadata(default):
    taskset, train = default
    assert isinstance(taskset, TaskSet)
    assert taskset.names == NAMES and sorted(train) == sorted(NAMES)
    for task in taskset:
        assert task.metric == ("matthews" if task.name == "acceptability" else "accuracy")
        assert task.description and task.prompt
        assert len(task.verbalizers) == task.num_labels
        assert len(task.field_names) == (2 if task.name in PAIRS else 1)
        assert "{0}" in task.prompt and (("{1}" in task.prompt) == (task.name in PAIRS))
    assert taskset.by_name("topic").num_labels == 4


def test_sizes(default):
    taskset, train = default
    for task in taskset:
        assert len(task.calibration) == 256 and len(task.evaluation) == 200
        assert len(train[task.name]) == 1000
    small, small_train = demo_tasks(n_calibration=10, n_evaluation=7, n_train=30, seed=3)
    for task in small:
        assert (len(task.calibration), len(task.evaluation), len(small_train[task.name])) == (10, 7, 30)


def test_splits_are_disjoint(default):
    taskset, train = default
    for task in taskset:
        splits = [task.calibration.inputs, task.evaluation.inputs, train[task.name].inputs]
        sets = [set(s) for s in splits]
        assert all(len(s) == len(x) for s, x in zip(sets, splits)), f"{task.name}: duplicates"
        assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]


def test_labels_in_range_and_balanced(default):
    taskset, train = default
    for task in taskset:
        for split in (task.calibration, task.evaluation, train[task.name]):
            assert split.labels is not None and len(split.labels) == len(split)
            assert all(isinstance(y, int) and 0 <= y < task.num_labels for y in split.labels)
            counts = Counter(split.labels)
            expected = len(split) / task.num_labels
            assert all(abs(counts[k] - expected) <= 0.05 * expected + 1 for k in range(task.num_labels))


def test_texts_non_empty_and_field_counts(default):
    taskset, train = default
    for task in taskset:
        for split in (task.calibration, task.evaluation, train[task.name]):
            for fields in split.inputs:
                assert isinstance(fields, tuple) and len(fields) == len(task.field_names)
                assert all(isinstance(f, str) and f.strip() for f in fields)
                task.render(fields)  # the prompt accepts the fields


def test_deterministic_for_same_seed(default):
    taskset, train = default
    again, again_train = demo_tasks()
    assert [t.fingerprint() for t in taskset] == [t.fingerprint() for t in again]
    assert train == again_train
    assert [t.calibration for t in taskset] == [t.calibration for t in again]


def test_different_seed_differs(default):
    taskset, train = default
    other, other_train = demo_tasks(seed=1)
    for a, b in zip(taskset, other):
        assert a.evaluation.inputs != b.evaluation.inputs
        assert train[a.name].inputs != other_train[a.name].inputs


def test_evaluation_independent_of_other_sizes(default):
    taskset, _ = default
    other, _ = demo_tasks(n_calibration=50, n_train=100)
    assert [t.evaluation for t in taskset] == [t.evaluation for t in other]


def test_fast():
    start = time.perf_counter()
    demo_tasks()
    assert time.perf_counter() - start < 1.0
