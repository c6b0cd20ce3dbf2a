"""--freeze-until: the frozen part runs once into the feature cache, training covers the rest."""

import numpy as np
import pytest
import torch

from learning_to_look.config import TrainConfig
from learning_to_look.nn.backbones import build_backbone
from learning_to_look.training.engine import fit
from learning_to_look.training.features import FEATURE_DTYPE, frozen_prefixes
from learning_to_look.training.resolve import resolve_run
from learning_to_look.training.run import prepare


@pytest.mark.parametrize("stage", ["stem", "layer2", "layer4"])
def test_a_stage_then_the_rest_is_the_whole_network(stage):
    torch.manual_seed(0)
    model = build_backbone("resnet18", 3).eval()
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        whole = model(x)
        h = model.run_until(x, stage)
        model.start_after = stage
        rest = model(h)
    assert torch.allclose(whole[0], rest[0], atol=1e-5) and torch.allclose(whole[1], rest[1], atol=1e-5)


def test_frozen_training_leaves_the_frozen_part_alone_and_caches_it_once(shapes_dir, tmp_path):
    cfg = TrainConfig(dataset="shapes-bg", method="vanilla", backbone="resnet18", freeze_until="layer3", epochs=1,
                      train_subset=12, batch_size=4)
    run = resolve_run(cfg, shapes_dir)
    prep = prepare(run, shapes_dir, progress=False)
    fitted = fit(run, prep.train, prep.val, progress=False, features=tmp_path)
    torch.manual_seed(cfg.seed)
    start = build_backbone("resnet18", 4).state_dict()  # the seeded initialisation the run started from
    after = fitted.model.state_dict()
    frozen = frozen_prefixes(fitted.model, "layer3")
    assert all(torch.equal(after[k], start[k]) for k in after if k.startswith(frozen))
    assert any(not torch.equal(after[k], start[k]) for k in after if k.startswith("layer4."))
    assert fitted.model.start_after is None  # the selected network takes images again, for the test split
    files = sorted(tmp_path.glob("layer3-*.npy"))
    assert len(files) == 2  # training and validation rows
    cached = np.load(files[0], mmap_mode="r")
    assert cached.dtype == FEATURE_DTYPE and cached.shape[1:] == (256, 14, 14)
    stamps = [f.stat().st_mtime_ns for f in files]
    fit(resolve_run(cfg, shapes_dir), prep.train, prep.val, progress=False, features=tmp_path)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # the second run read the cache
