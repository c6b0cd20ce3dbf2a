"""ResNet-18/50 backbones (GAP head, exact CAM) and timm ImageNet checkpoints mapped onto them."""

import time

import pytest
import torch

from learning_to_look.config import TrainConfig
from learning_to_look.errors import L2LError
from learning_to_look.training.resolve import resolve
from learning_to_look.nn.backbones import build_backbone
from learning_to_look.nn.pretrained import load_into, load_pretrained, map_timm_keys

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn(prefix: str, channels: int) -> dict[str, tuple]:
    return {f"{prefix}.{p}": () if p == "num_batches_tracked" else (channels,) for p in BN}


def timm_resnet_shapes(name: str, num_classes: int = 1000) -> dict[str, tuple]:
    """Key -> shape of timm's resnet18 / resnet50 state dict, written out from the
    architecture (He et al. 2016, v1.5), independently of the project's modules."""
    bottleneck = name == "resnet50"
    depths = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    shapes = {"conv1.weight": (64, 3, 7, 7)} | bn("bn1", 64)
    width = 64
    for i, (depth, planes) in enumerate(zip(depths, (64, 128, 256, 512))):
        out = planes * (4 if bottleneck else 1)
        for j in range(depth):
            b = f"layer{i + 1}.{j}"
            convs = ([(width, planes, 1), (planes, planes, 3), (planes, out, 1)] if bottleneck
                     else [(width, planes, 3), (planes, planes, 3)])
            for k, (cin, cout, ks) in enumerate(convs, 1):
                shapes[f"{b}.conv{k}.weight"] = (cout, cin, ks, ks)
                shapes |= bn(f"{b}.bn{k}", cout)
            if j == 0 and (i > 0 or width != out):
                shapes[f"{b}.downsample.0.weight"] = (out, width, 1, 1)
                shapes |= bn(f"{b}.downsample.1", out)
            width = out
    return shapes | {"fc.weight": (num_classes, width), "fc.bias": (num_classes,)}


def random_state(shapes: dict[str, tuple], prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {prefix + k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
            for k, s in shapes.items()}


@pytest.mark.parametrize("name, params", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_parameter_counts_match_the_published_networks(name, params):
    model = build_backbone(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == params
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == timm_resnet_shapes(name)


def test_resnet18_cam_shapes_and_the_gap_identity():
    model = build_backbone("resnet18", num_classes=4).eval()
    logits, feats = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 4) and feats.shape == (2, 512, model.feature_size, model.feature_size)
    cam = torch.einsum("kc,bchw->bkhw", model.classifier_weight, feats)  # (B,K,7,7)
    assert torch.allclose(cam.mean((2, 3)) + model.fc.bias, logits, atol=1e-4)  # CAM is exact for a GAP head


def test_resnet_normalises_its_input_by_imagenet_statistics():
    """The project's [-1, 1] input reaches conv1 as (x01 - mean) / std: an image at
    ImageNet's mean colour becomes zero, a white one (1 - mean) / std, by hand."""
    model = build_backbone("resnet18").eval()
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    at_mean = (2 * mean - 1).view(1, 3, 1, 1).expand(1, 3, 224, 224)  # [-1, 1] scale
    model(torch.cat([at_mean, torch.ones(1, 3, 224, 224)]))
    assert seen[0][0].abs().max() < 1e-6
    assert torch.allclose(seen[0][1, :, 0, 0], (1 - mean) / std)


def test_wrong_input_size_names_the_fix():
    with pytest.raises(L2LError, match="224x224"):
        build_backbone("resnet18")(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_checkpoint_loads_key_for_key_and_a_new_head_stays_fresh(name):
    state = random_state(timm_resnet_shapes(name), prefix="module.")  # as a DataParallel script saves it
    same = build_backbone(name, num_classes=1000)
    assert load_into(same, state, "test") == []
    for k, v in map_timm_keys(state).items():
        assert torch.equal(same.state_dict()[k], v), k
    new_head = build_backbone(name, num_classes=4)
    before = new_head.fc.weight.detach().clone()
    assert load_into(new_head, state, "test") == ["fc.bias", "fc.weight"]
    assert torch.equal(new_head.fc.weight, before)
    assert torch.equal(new_head.layer4[0].conv1.weight, state["module.layer4.0.conv1.weight"])


def test_key_mapping_by_hand():
    x = torch.zeros(1)
    mapped = map_timm_keys({"model.layer1.0.conv1.weight": x, "head.fc.bias": x, "bn1.num_batches_tracked": x})
    assert list(mapped) == ["layer1.0.conv1.weight", "fc.bias"]


def test_a_checkpoint_of_another_network_is_one_line():
    shapes = timm_resnet_shapes("resnet50")
    with pytest.raises(L2LError, match="not a resnet18 checkpoint"):
        load_into(build_backbone("resnet18"), random_state(shapes), "x.safetensors")
    shapes = timm_resnet_shapes("resnet18")
    shapes.pop("layer3.1.conv2.weight")
    with pytest.raises(L2LError, match="missing layer3.1.conv2.weight"):
        load_into(build_backbone("resnet18"), random_state(shapes), "x.safetensors")


def test_safetensors_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    state = random_state(timm_resnet_shapes("resnet18"))
    save_file(state, str(tmp_path / "r18.safetensors"))
    model = build_backbone("resnet18", num_classes=1000)
    load_pretrained(model, str(tmp_path / "r18.safetensors"))
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(L2LError, match="not a safetensors file"):
        load_pretrained(model, str(tmp_path / "bad.safetensors"))


def test_pretrained_is_checked_before_any_data(tmp_path):
    with pytest.raises(L2LError, match="applies to resnet18, resnet50"):
        resolve(TrainConfig(backbone="lenet-gap", pretrained="timm/resnet18.a1_in1k"))
    with pytest.raises(L2LError, match="no such .safetensors file"):
        resolve(TrainConfig(dataset="shapes-bg", backbone="resnet18", method="vanilla",
                            pretrained=str(tmp_path / "none.safetensors")))
    t0 = time.perf_counter()  # HF_HUB_OFFLINE=1 in the tests: an uncached hub id fails at once
    with pytest.raises(L2LError, match="hf download timm/resnet18.a1_in1k"):
        resolve(TrainConfig(dataset="shapes-bg", backbone="resnet18", method="vanilla",
                            pretrained="timm/resnet18.a1_in1k"))
    assert time.perf_counter() - t0 < 2


def test_pretrained_left_unset_keeps_earlier_run_folders():
    assert TrainConfig().fingerprint() == TrainConfig(pretrained=None).fingerprint()
    assert TrainConfig(pretrained="a.safetensors").fingerprint() != TrainConfig().fingerprint()
