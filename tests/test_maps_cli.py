"""`l2l maps` end to end on a tiny random CLIP saved as a --vlm folder."""

import time

import numpy as np
import pytest

from learning_to_look.cli import main
from tiny_models import save_tiny_clip


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("L2L_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("L2L_MAPS_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return str(save_tiny_clip(tmp_path_factory.mktemp("vlm") / "tiny-clip"))


def _opts(data_dir, vlm):
    return ["--dataset", "decoymnist", "--data-dir", str(data_dir), "--limit", "40", "--vlm", vlm, "--input-size", "32",
            "--prompt", "a handwritten digit", "--negatives", "background,black,dark"]


def test_missing_model_is_one_line_exit_2(data_dir, capsys):
    t0 = time.perf_counter()
    rc = main(["maps", "generate", "--dataset", "decoymnist", "--data-dir", str(data_dir), "--limit", "4", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and time.perf_counter() - t0 < 10
    assert err.startswith("error:") and "\n" not in err and "--vlm PATH" in err and "Traceback" not in err


def test_generate_check_show_list(data_dir, vlm, tmp_path, capsys):
    assert main(["maps", "check", *_opts(data_dir, vlm)]) == 2
    assert "l2l maps generate" in capsys.readouterr().err
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "decoymnist/train: 40 maps" in out and "NOT a real VLM" in out and "AUROC vs digit" in out
    assert "mass on decoy" in out and "artefact patches" in out
    assert main(["maps", "check", *_opts(data_dir, vlm)]) == 0
    assert "AUROC vs digit" in capsys.readouterr().out
    png = tmp_path / "grid.png"
    assert main(["maps", "show", *_opts(data_dir, vlm), "--out", str(png), "--n", "8"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["maps", "list"]) == 0
    assert "random-init test model" in capsys.readouterr().out


def test_flags_that_do_not_apply_are_errors(data_dir, capsys):
    assert main(["maps", "generate", "--backend", "oracle", "--iterations", "3", "--data-dir", str(data_dir)]) == 2
    assert "--iterations does not apply to backend oracle" in capsys.readouterr().err


def test_oracle_needs_no_cache(data_dir, tmp_path, capsys):
    assert main(["maps", "generate", "--backend", "oracle", "--data-dir", str(data_dir), "--limit", "50"]) == 0
    out = capsys.readouterr().out
    assert "maps oracle (annotation)" in out and "AUROC vs digit 1.000" in out
    assert not (tmp_path / "cache").exists()


def test_image_folder_via_cli(vlm, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    for i, size in enumerate([(24, 40), (33, 33)]):
        Image.fromarray(np.full((*size, 3), 60 * i, np.uint8)).save(src / f"im{i}.png")
    assert main(["maps", "generate", "--images", str(src), "--out", str(tmp_path / "out"), "--vlm", vlm,
                 "--input-size", "32"]) == 0
    assert "2 maps from clip (vlm)" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "im0.png") as im:
        assert im.size == (40, 24)
    assert main(["maps", "show", "--images", str(src), "--vlm", vlm, "--input-size", "32",
                 "--out", str(tmp_path / "g.png")]) == 0


def test_oracle_on_an_image_folder_is_one_line_exit_2(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    rc = main(["maps", "generate", "--images", str(tmp_path), "--backend", "oracle"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: map source oracle needs the clean digit") and "--dataset" in err
