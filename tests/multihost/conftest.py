"""Fixtures shared by the multi-host tests: two network-namespace hosts (sshd, a shared MLflow server)."""

from __future__ import annotations

import pytest

from tests.multihost import hosts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Two hosts for the module's tests; skipped, with the reason, where they cannot be built."""
    reason = hosts.unavailable_reason()
    if reason:
        pytest.skip(f"multi-host tests: {reason}")
    with hosts.two_hosts(tmp_path_factory.mktemp("cluster")) as built:
        yield built
