"""The reliability machinery itself: time limits, the write watch, outcome counts, mutations,
the simulated full disk, the malicious corpus."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from nngraph_core import ShapeMismatchError
from nngraph_testing.faults import full_disk
from nngraph_testing.fuzz import (
    ExampleTimeout,
    Outcomes,
    UnexpectedWrite,
    mutate,
    mutate_tree,
    time_limit,
    watch_writes,
)
from nngraph_testing.malicious import malicious_corpus


def test_time_limit_stops_a_busy_loop_and_is_not_an_exception() -> None:
    with pytest.raises(ExampleTimeout), time_limit(0.2):
        try:
            while True:
                pass
        except Exception:  # a reader's broad handler must not hide a hang
            pytest.fail("ExampleTimeout was caught as an Exception")


def test_watch_writes_sees_writes_outside_only(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    with watch_writes(inside):
        (inside / "a.txt").write_text("ok")
        (outside / "b.txt").exists()  # reading is fine
    with pytest.raises(UnexpectedWrite, match=r"b\.txt"), watch_writes(inside):
        (outside / "b.txt").write_text("no")
    with pytest.raises(UnexpectedWrite, match=r"os\.rename"), watch_writes(inside):
        os.replace(inside / "a.txt", outside / "a.txt")


def test_outcomes_count_results_and_typed_errors_only() -> None:
    outcomes = Outcomes("tool test")

    def typed() -> None:
        raise ShapeMismatchError("wrong shape")

    def untyped() -> None:
        raise ValueError("not typed")

    assert outcomes.run(lambda: 3) == 3
    assert isinstance(outcomes.run(typed), ShapeMismatchError)
    with pytest.raises(ValueError):
        outcomes.run(untyped)
    assert outcomes.report() == {"reader": "tool test", "examples": 2, "results": 1,
                                 "typed_errors": {"ShapeMismatchError": 1}}  # fmt: skip


def test_mutations() -> None:
    assert mutate(b"abcd", [("truncate", 0.5)]) == b"ab"
    assert mutate(b"abcd", [("flip", 0.0, 0)]) == b"`bcd"
    assert mutate(b"abcdefgh", [("int", 0.0, 2**64 - 1, 8)]) == b"\xff" * 8
    tree = {"a": [1, 2], "b": {"c": 3}}
    assert mutate_tree(tree, [("replace", 0.99, None, "")]) == {"a": [1, 2], "b": {"c": None}}
    assert tree == {"a": [1, 2], "b": {"c": 3}}  # a copy is mutated


def test_full_disk_fails_writes_under_the_folder_only(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        with full_disk(tmp_path, free_bytes=3) as state:
            assert os.write(fd, b"abcdef") == 3
            with pytest.raises(OSError) as info:
                os.write(fd, b"x")
            assert info.value.errno == errno.ENOSPC and state["written"] == 3
        assert os.write(fd, b"x") == 1  # the disk is back
    finally:
        os.close(fd)


def test_malicious_corpus_has_25_distinct_payloads(tmp_path: Path) -> None:
    corpus = malicious_corpus(tmp_path)
    assert len(corpus) >= 25
    assert len({p.name for p in corpus}) == len({p.canary for p in corpus}) == len(corpus)
    assert {p.kind for p in corpus} >= {"pickle", "torch-zip", "torch-legacy", "npy", "zip", "tar"}
    assert not any(p.canary.exists() for p in corpus)
