"""Skip policy: every skip prints its reason (tools/test.sh passes -rs), and a strict run fails on
any skip that is not on the allow-list below.

A run is strict under tools/test.sh (LITELM_EDGE_REQUIRE_TOOLCHAINS=1) and on CI (CI=true): there
the toolchains, sshd, binfmt and root are all there, so a skip means a check silently went away
(for example the aarch64 and Android on-device parity tests). Outside a strict run skips stay skips.
tests/conftest.py loads this file as a plugin (pytest_plugins).
"""
from __future__ import annotations

import fnmatch
import os

import pytest

# (test id pattern (fnmatch), text the skip reason must contain, why this skip may happen).
# Only skips that a correct CI machine can still meet belong here; CI runs as root, so in CI these
# never fire either: they are for `tools/test.sh` on a developer's machine without root.
ALLOWED = (
    ("tests/test_push.py::test_disk_full[[]*]", "needs root",
     "mounting a 1 MB tmpfs as the device's disk needs root; CI is root"),
    ("tests/test_remote.py::test_netns_device_and_proxyjump", "needs root",
     "a network namespace for the device host needs root and iproute2; CI is root"),
)

_skipped: list[tuple[str, str]] = []  # (test id, reason) of every skip this session


def strict() -> bool:
    return os.environ.get("LITELM_EDGE_REQUIRE_TOOLCHAINS") == "1" or os.environ.get("CI") == "true"


def allowed(nodeid: str, reason: str) -> bool:
    return any(fnmatch.fnmatchcase(nodeid, pat) and need in reason for pat, need, _ in ALLOWED)


def _reason(report) -> str:
    lr = report.longrepr
    text = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _reason(report)))


def pytest_collectreport(report):
    if report.skipped:  # a module-level importorskip skips the whole file
        _skipped.append((report.nodeid, _reason(report)))


def unlisted() -> list[tuple[str, str]]:
    return [(n, r) for n, r in _skipped if not allowed(n, r)]


def pytest_sessionfinish(session, exitstatus):
    if strict() and unlisted() and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bad = unlisted()
    if not bad:
        return
    word = "FAIL" if strict() else "note"
    terminalreporter.section(f"skips not on the allow-list (tests/skips.py): {len(bad)}", sep="=",
                             red=strict())
    for nodeid, reason in bad:
        terminalreporter.line(f"{word}: {nodeid}: {reason}")
    if strict():
        terminalreporter.line("this run is strict (LITELM_EDGE_REQUIRE_TOOLCHAINS=1 or CI=true): fix the cause, "
                              "or add the skip to ALLOWED in tests/skips.py with the reason it may happen")
