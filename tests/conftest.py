"""Shared test fixtures."""
import contextlib
import fcntl

import pytest
import torch


@pytest.fixture
def one_thread():
    """Pin torch to one thread: results do not depend on the thread count and two parallel
    workers never oversubscribe the 2-core CI machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Modules that take minutes on 2 cores, longest first. Under `-n 2 --dist loadfile` (pyproject.toml) they are
# handed out before everything else, so the other worker runs the short modules beside them instead of the
# long ones starting last (longest-processing-time-first). Serial runs see the same order.
LONG_MODULES = ("test_paper_smoke.py", "test_workflow.py", "test_slurm.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order inside each group is pytest's own


@pytest.fixture(scope="session")
def memory_heavy(tmp_path_factory):
    """`with memory_heavy(): ...` around paper-size training (tests/test_paper_smoke.py's DAG, tests/test_slurm.py's
    2-node row): at ~5 GB per process (ImageNet-256: 13 GB) two of them at once would not fit the 24 GB CI machine,
    so the two xdist workers take turns on a lock file in the base temp folder they share."""
    path = tmp_path_factory.getbasetemp().parent / "hdit-memory-heavy.lock"

    @contextlib.contextmanager
    def hold():
        with open(path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    return hold
