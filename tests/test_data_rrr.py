"""DecoyMNIST-RRR (docs/protocol.md §2.5) against an independent reference written out
literally with the legacy global RNG, image by image, as Ross et al.'s notebook would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.data import load_mnist
from learning_to_look.maps import get_map_source
from learning_to_look.maps.diagnostics import mass_share
from learning_to_look.training.resolve import resolve
from learning_to_look.training.run import run


@pytest.fixture(scope="module")
def reference():
    """x, corners and shades of both splits, from one np.random.seed(0) stream."""
    m = load_mnist()
    state = np.random.get_state()
    np.random.seed(0)
    out = {}
    try:
        for split, x, y in (("train", m.x_train, m.y_train), ("test", m.x_test, m.y_test)):
            images, corners, shades = x.copy(), [], []
            for i in range(len(y)):
                d = int(y[i]) if split == "train" else np.random.choice(10)
                r = 0 if np.random.rand() < 0.5 else 24
                c = 0 if np.random.rand() < 0.5 else 24
                images[i, r:r + 4, c:c + 4] = 255 - 25 * d
                corners.append((r, c))
                shades.append(d)
            out[split] = (images, np.array(corners), np.array(shades), x, y)
    finally:
        np.random.set_state(state)
    return out


@pytest.mark.parametrize("split", ["train", "test"])
def test_byte_exact_against_the_reference(datasets, reference, split):
    s = getattr(datasets["decoymnist-rrr"], split)
    images, corners, shades, digits, labels = reference[split]
    np.testing.assert_array_equal(s.images[:, 0], images)
    np.testing.assert_array_equal(s.corners, corners)
    np.testing.assert_array_equal(s.shades, shades)
    np.testing.assert_array_equal(s.digits, digits)
    np.testing.assert_array_equal(s.labels, labels)
    assert s.images.dtype == np.uint8 and s.images.shape[1:] == (1, 28, 28)


def test_swatch_shade_and_independence(datasets):
    ds = datasets["decoymnist-rrr"]
    for s in (ds.train, ds.test):
        mask = s.decoy_masks()
        assert mask.shape == (len(s), 28, 28) and (mask.sum((1, 2)) == 16).all()
        outside = ~mask[:, None]
        np.testing.assert_array_equal(s.images[outside], s.digits[:, None][outside])  # only the swatch changed
        swatch = s.images[:, 0][mask].reshape(len(s), 16)
        np.testing.assert_array_equal(swatch, (255 - 25 * s.shades.astype(int))[:, None] * np.ones(16, int))
    np.testing.assert_array_equal(ds.train.shades, ds.train.labels)  # training shade = the label
    assert abs((ds.test.shades == ds.test.labels).mean() - 0.1) < 0.01  # test shade says nothing of the label
    assert set(np.unique(ds.test.corners)) == {0, 24}


def test_not_decoy_maps_and_decoy_share_work(datasets):
    split = datasets["decoymnist-rrr"].train.subset(np.arange(50))
    maps = get_map_source("not-decoy").generate(split)
    decoy = split.decoy_masks()
    assert (maps[decoy] == 0).all() and (maps[~decoy] == 1).all()
    share = mass_share(torch.ones(50, 28, 28, dtype=torch.float64), torch.as_tensor(decoy, dtype=torch.float64))
    assert torch.allclose(share, torch.full((50,), 16 / 784, dtype=torch.float64))


def test_trains_and_reports_decoy_shares(data_dir, tmp_path):
    r = run(TrainConfig(dataset="decoymnist-rrr", method="rrr", maps="not-decoy", epochs=1, train_subset=200),
            runs_dir=tmp_path, data_dir=data_dir, progress=False)
    assert r["dataset"]["name"] == "decoymnist-rrr" and 0 <= r["test"]["cam_on_decoy"] <= 1
    assert resolve(TrainConfig(dataset="decoymnist-rrr", method="vanilla")).dataset == "decoymnist-rrr"


def test_map_source_without_a_decoy_is_one_line(data_dir, tmp_path, capsys):
    code = main(["train", "--dataset", "mnist", "--method", "rrr", "--maps", "not-decoy", "--data-dir", str(data_dir),
                 "--runs-dir", str(tmp_path), "--train-subset", "200", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "decoy" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
