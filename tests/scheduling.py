"""Which test files must run in one pytest-xdist worker, one after the other (ADR 0026).

Every file is a unit of work of its own (xdist's ``loadfile``: a module's fixtures are set up once). The files
named here share a session fixture that is expensive to start (``tests/integration/shared_brokers.py``): the
scheduler in ``tests/conftest.py`` hands each group to one worker as a whole, so the broker starts once.
``tests/integration/conftest.py`` refuses a collection where a test uses one of these fixtures from a file
not listed with it, so a new user is added here rather than silently starting a second broker.

(xdist's own ``xdist_group`` mark cannot do this with pytest 9: xdist 3.8 marks the group by rewriting
``item._nodeid``, which pytest 9 no longer reads, so ``--dist loadgroup`` runs every test on its own.)
"""

from __future__ import annotations

GROUPS: dict[str, tuple[str, ...]] = {
    # The secured broker (shared_brokers.secured_broker): SASL_SSL, SCRAM, ACLs on.
    "secured-broker": (
        "tests/integration/test_devkafka_secure.py",
        "tests/integration/test_least_privilege_acls.py",
        "tests/integration/test_secured_cluster.py",
    ),
    # The 3-broker cluster (shared_brokers.three_brokers). Listed in the order they run: test_devkafka_cluster
    # needs the cluster fresh (it checks the internal topics it makes while a broker is down).
    "three-brokers": (
        "tests/integration/test_devkafka_cluster.py",
        "tests/integration/test_cluster_failover.py",
    ),
}
FIXTURE_GROUPS = {"secured_broker": "secured-broker", "three_brokers": "three-brokers"}
"""Each shared session fixture, and the group whose files may use it."""

GROUP_OF = {path: group for group, paths in GROUPS.items() for path in paths}


def unit_of(path: str) -> str:
    """The unit of work a test file belongs to: its group, or the file itself."""
    return GROUP_OF.get(path, path)
