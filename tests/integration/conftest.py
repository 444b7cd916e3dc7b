"""pytest setup for the btrfs-fuse integration tests.

* makes tests/lib importable (corpus, mounts, treecmp)
* `corpus_manifests` session fixture: builds the image corpus once per
  session (only missing / outdated images are rebuilt) -> {name: manifest}
* prints `N passed, N failed` as the very last line of the run
"""

import os
import sys

import pytest

sys.dont_write_bytecode = True
LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
if LIB not in sys.path:
    sys.path.insert(0, LIB)

import corpus  # noqa: E402


@pytest.fixture(scope="session")
def corpus_manifests():
    if os.geteuid() != 0:
        pytest.fail("the corpus is built with mkfs.btrfs and loop mounts: run as root",
                    pytrace=False)
    try:
        return corpus.build_corpus(jobs=int(os.environ.get("BTRFS_FUSE_CORPUS_JOBS", "2")))
    except corpus.BuildError as e:
        pytest.fail("corpus build failed (dir %s, seed %d):\n%s" % (
            corpus.corpus_dir(), corpus.base_seed(), e), pytrace=False)


# ------------------------------------------------- final "N passed, N failed"

_outcomes = {}      # nodeid -> "passed" | "failed" | "skipped"
_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def _record(nodeid, outcome):
    old = _outcomes.get(nodeid)
    if old is None or _RANK[outcome] > _RANK[old]:
        _outcomes[nodeid] = outcome


def pytest_runtest_logreport(report):
    if report.failed:
        _record(report.nodeid, "failed")
    elif report.skipped:
        _record(report.nodeid, "skipped")
    elif report.when == "call":
        _record(report.nodeid, "passed")


def pytest_collectreport(report):
    if report.failed:
        _record("collect:" + report.nodeid, "failed")


def pytest_unconfigure(config):
    if getattr(config.option, "collectonly", False):
        return
    vals = list(_outcomes.values())
    out = "\n"
    if vals.count("skipped"):
        out += "(%d skipped)\n" % vals.count("skipped")
    # the very last line, exactly "N passed, N failed" (errors count as failed)
    out += "%d passed, %d failed\n" % (vals.count("passed"), vals.count("failed"))
    sys.stdout.write(out)
    sys.stdout.flush()
