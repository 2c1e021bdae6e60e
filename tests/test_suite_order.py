"""The suite's own schedule: the files with torchrun launches (``distributed``) run first
(conftest's ``pytest_collection_modifyitems``), so under ``--dist worksteal`` no long test is
left to the end while the other worker idles; and ``make test`` asks for that distribution."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, pytest_collection_modifyitems


class _Item:
    def __init__(self, nodeid: str, *markers: str) -> None:
        self.nodeid, self.markers = nodeid, markers

    def get_closest_marker(self, name: str) -> object:
        return name if name in self.markers else None


def test_files_with_process_tests_go_first_each_file_kept_together():
    items = [
        _Item("tests/a.py::quick"),
        _Item("tests/b.py::quick"),
        _Item("tests/b.py::slow", "slow"),
        _Item("tests/c.py::quick"),
        _Item("tests/d.py::quick"),
        _Item("tests/d.py::launch", "slow", "distributed"),
    ]
    pytest_collection_modifyitems(items)
    assert [item.nodeid for item in items] == [
        "tests/d.py::quick",
        "tests/d.py::launch",
        "tests/b.py::quick",
        "tests/b.py::slow",
        "tests/a.py::quick",
        "tests/c.py::quick",
    ]


def test_this_sessions_tests_are_in_that_order(request: pytest.FixtureRequest):
    """Whatever was selected: a file with a distributed test never after one without."""

    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("distributed") else 1

    first: dict[str, int] = {}
    for item in request.session.items:
        path = item.nodeid.split("::")[0]
        first[path] = min(first.get(path, 1), rank(item))
    ranks = [
        first[path]
        for path in dict.fromkeys(i.nodeid.split("::")[0] for i in request.session.items)
    ]
    assert ranks == sorted(ranks), ranks


def test_make_test_distributes_with_worksteal():
    makefile = (REPO / "Makefile").read_text()
    for target in ("test", "test-fast"):
        recipe = re.search(rf"^{target}: install\n\t(.*)$", makefile, re.MULTILINE)
        assert recipe and "--dist worksteal" in recipe.group(1), target
