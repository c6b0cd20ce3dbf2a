"""The benchmark data sets, built exactly as PROTOCOL 2.2 and 2.3 describe.

Each builder maps the verified MNIST arrays to a dict of uint8 arrays:
``x_{split}`` (N, C, 28, 28), ``y_{split}`` (N,), ``digit_{split}`` (N, 28, 28), the
clean grey digit kept so an exact digit mask can be derived later, and for
DecoyMNIST ``corner_{split}`` (N, 2) holding (top, left) of the decoy square.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import L2LError
from ..registry import Registry
from .mnist import MNISTArrays

#: A pixel of the clean grey digit is one brighter than this (of 255): the ground truth
#: for oracle maps, map quality and attention evaluation. Declared once, here.
DIGIT_THRESHOLD = 10

SPLITS = ("train", "test")


def hsl_palette(n: int = 10) -> np.ndarray:
    """``n`` colours from red to purple interpolated in HSL, as the `colour` package's
    ``Color("red").range_to(Color("purple"), n)`` does; float64 RGB in [0, 1], shape (n, 3)."""
    purple_h, purple_l, purple_s = colorsys.rgb_to_hls(128 / 255, 0.0, 128 / 255)
    start, end = np.array([0.0, 1.0, 0.5]), np.array([purple_h, purple_s, purple_l])  # (h, s, l)
    steps = np.linspace(0.0, 1.0, n)[:, None]
    hsl = start + steps * (end - start)
    return np.array([colorsys.hls_to_rgb(h, l, s) for h, s, l in hsl])


PALETTE = hsl_palette()


def colorize(gray: np.ndarray, colour_index: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """``out[n, c] = uint8(clip(palette[k_n, c] * gray_n, 0, 255))``, truncating like the reference."""
    scale = palette[colour_index].astype(np.float64)[:, :, None, None]
    return np.clip(scale * gray[:, None].astype(np.float64), 0, 255).astype(np.uint8)


def _split_arrays(m: MNISTArrays, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels (N,) of one MNIST split."""
    return (m.x_train, m.y_train) if split == "train" else (m.x_test, m.y_test)


def build_mnist(m: MNISTArrays) -> dict[str, np.ndarray]:
    out = {}
    for s in SPLITS:
        x, y = _split_arrays(m, s)
        out |= {f"x_{s}": x[:, None].copy(), f"y_{s}": y, f"digit_{s}": x}
    return out


def build_colormnist(m: MNISTArrays) -> dict[str, np.ndarray]:
    colour_of = {"train": lambda y: y, "test": lambda y: 9 - y}
    out = {}
    for s in SPLITS:
        x, y = _split_arrays(m, s)
        k = colour_of[s](y.astype(np.int64))
        out |= {f"x_{s}": colorize(x, k), f"y_{s}": y, f"digit_{s}": x}
    return out


DECOY_SIZE = 5
DECOY_POSITIONS = (0, 23)


def decoy_corners(n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One (top, left) per image, drawn top then left from ``np.random.seed(seed)``,
    the whole training set first, then the test set, from the same stream.

    Two scalar draws per image from the legacy global RNG are what the reference does;
    ``RandomState.choice(2, size=2n)`` consumes the same stream in the same order.
    """
    rs = np.random.RandomState(seed)
    choices = np.asarray(DECOY_POSITIONS, dtype=np.uint8)
    draws = choices[rs.choice(len(DECOY_POSITIONS), size=2 * (n_train + n_test))].reshape(-1, 2)
    return draws[:n_train], draws[n_train:]


def decoy_intensity(y: np.ndarray, split: str) -> np.ndarray:
    y = y.astype(np.int64)
    return (255 - 25 * y if split == "train" else 25 * y).astype(np.uint8)


def square_masks(corners: np.ndarray, size: int = DECOY_SIZE, hw: int = 28) -> np.ndarray:
    """Boolean (N, hw, hw) masks of the ``size``x``size`` squares at ``corners``."""
    rows = np.arange(hw)
    top, left = corners[:, 0, None].astype(np.int64), corners[:, 1, None].astype(np.int64)
    in_rows = (rows >= top) & (rows < top + size)
    in_cols = (rows >= left) & (rows < left + size)
    return in_rows[:, :, None] & in_cols[:, None, :]


def build_decoymnist(m: MNISTArrays) -> dict[str, np.ndarray]:
    corners = dict(zip(SPLITS, decoy_corners(len(m.y_train), len(m.y_test))))
    out = {}
    for s in SPLITS:
        x, y = _split_arrays(m, s)
        mask = square_masks(corners[s])
        value = decoy_intensity(y, s)[:, None, None]
        img = np.where(mask, value, x)
        out |= {f"x_{s}": img[:, None], f"y_{s}": y, f"digit_{s}": x, f"corner_{s}": corners[s]}
    return out


RRR_DECOY_SIZE = 4
RRR_POSITIONS = (0, 24)


def rrr_draws(n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ross et al.'s swatch draws (PROTOCOL 2.5), one legacy stream seeded once:
    per training image ``r`` then ``c`` (``rand() < 0.5`` picks row/column 0, else
    24); then per test image the shade digit ``d = choice(10)`` first, then ``r``, ``c``.
    Returns (train corners (N, 2), test corners (M, 2), test shades (M,))."""
    rs = np.random.RandomState(seed)
    near, far = RRR_POSITIONS
    train = np.where(rs.random_sample((n_train, 2)) < 0.5, near, far).astype(np.uint8)  # the 2N draws in order
    test = np.empty((n_test, 2), np.uint8)
    shade = np.empty(n_test, np.uint8)
    for i in range(n_test):  # choice() and rand() interleave, so the test stream is drawn image by image
        shade[i] = rs.choice(10)
        test[i] = [near if rs.random_sample() < 0.5 else far, near if rs.random_sample() < 0.5 else far]
    return train, test, shade


def build_decoymnist_rrr(m: MNISTArrays) -> dict[str, np.ndarray]:
    """The original DecoyMNIST of Ross et al. 2017: a 4x4 swatch of shade 255 - 25y in
    training and 255 - 25d at test time, d a random digit that says nothing of the label."""
    train, test, test_shade = rrr_draws(len(m.y_train), len(m.y_test))
    corners = {"train": train, "test": test}
    out = {}
    for s in SPLITS:
        x, y = _split_arrays(m, s)
        shade = y.astype(np.uint8) if s == "train" else test_shade
        value = (255 - 25 * shade.astype(np.int64)).astype(np.uint8)[:, None, None]
        img = np.where(square_masks(corners[s], RRR_DECOY_SIZE), value, x)
        out |= {f"x_{s}": img[:, None], f"y_{s}": y, f"digit_{s}": x, f"corner_{s}": corners[s],
                f"shade_{s}": shade}
    return out


#: What a data set can declare irrelevant (``DatasetSpec.shortcut``), and what a user
#: states for an imported one (``--irrelevant``, :data:`IRRELEVANT_CHOICES`), which names
#: the region a background.
COMPONENTS = ("region", "texture", "colour", "none")
IRRELEVANT_CHOICES = ("background", "colour", "texture")
_STATED = {"background": "region", "colour": "colour", "texture": "texture"}


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: how to build it and what it is."""

    name: str
    build: Callable[[MNISTArrays | None], dict[str, np.ndarray]] | None  # None: imported, not built
    protocol: str
    description: str
    channels: int
    decoy_size: int = 0
    version: int = 1
    num_classes: int = 10
    #: Names of the groups (e.g. "circle/checks") of spurious-correlation data; the
    #: builder then writes ``group_{split}`` and results report worst-group accuracy.
    group_names: tuple[str, ...] = ()
    uses_mnist: bool = True  # False: built from nothing but a seed (synthetic)
    class_names: tuple[str, ...] = ()  # what predictions call the classes; unset: "0", "1", ...
    size: int = 28  # side of the stored images
    has_objects: bool = True  # the builder keeps each image's object (``digit_*``): oracle maps and attention metrics
    partial_masks: bool = False  # only some images have an object (``masked_*`` says which): an import's partial masks
    grey: bool = False  # an import whose three channels are equal everywhere: no colour to randomise
    has_val: bool = False  # a ``val_train`` array marks the validation images (imported sets with a val/ folder)
    imported_from: str | None = None  # the folder or CSV of `l2l data import`; None for built sets
    #: What the shortcut is, for methods that penalise or randomise it as a component
    #: (``cdep``, ``ce``): "region" (where the maps' complement lies: a decoy, a background),
    #: "texture" (a region too, whose content is another image's texture), "colour" (of the
    #: object's own pixels, which no spatial map separates from its shape) or "none" (a
    #: clean data set: nothing to penalise). One of :data:`COMPONENTS`.
    shortcut: str = "region"
    #: What reports call the object a network should look at, and the shortcut it should not
    #: (the MNIST sets': the digit and the decoy; an import's: its own words, or object and background).
    object_word: str = "digit"
    shortcut_word: str = "decoy"

    @property
    def classes(self) -> tuple[str, ...]:
        """What results and predictions call the classes: the names, else "0", "1", ..."""
        return self.class_names or tuple(str(c) for c in range(self.num_classes))


DATASETS: Registry[DatasetSpec] = Registry("data set")


def irrelevant_component(spec: DatasetSpec, stated: str | None) -> str:
    """The component of ``spec`` that is irrelevant (one of :data:`COMPONENTS`): the one a
    user ``stated`` (``--irrelevant``) for an imported set, else the one the data set
    declares. A built set already declares it, so stating another is refused; colour
    cannot be irrelevant in a grey data set."""
    if stated is None:
        return spec.shortcut
    component = _STATED[stated]
    if component == "colour" and (spec.channels == 1 or spec.grey):
        raise L2LError(f"--irrelevant colour: data set {spec.name} is grey (its three channels are equal), so its "
                       "colour carries nothing; use --irrelevant background, or a colour data set (e.g. colormnist)")
    if spec.imported_from is None and component != spec.shortcut:
        raise L2LError(f"--irrelevant {stated}: data set {spec.name} already declares its irrelevant component, "
                       f"{spec.shortcut}; drop --irrelevant (it is for imported data sets)")
    return component


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a data set; its name becomes a choice of every ``--dataset`` option."""
    return DATASETS.register(spec)


register(DatasetSpec("mnist", build_mnist, "MNIST, grey, unchanged (clean-data upper bound)",
                     "original MNIST, 1 channel", channels=1, shortcut="none"))
register(DatasetSpec("colormnist", build_colormnist, "ColorMNIST, CDEP protocol (PROTOCOL 2.2)",
                     "digit coloured by label in training, by 9-label in test", channels=3, shortcut="colour"))
register(DatasetSpec("decoymnist", build_decoymnist, "DecoyMNIST, CDEP variant (PROTOCOL 2.3)",
                     "5x5 corner square, intensity 255-25y in training, 25y in test", channels=1,
                     decoy_size=DECOY_SIZE))
register(DatasetSpec("decoymnist-rrr", build_decoymnist_rrr, "DecoyMNIST-RRR, Ross et al. 2017 (PROTOCOL 2.5)",
                     "4x4 corner swatch of shade 255-25y in training, 255-25d at test (d a random digit)",
                     channels=1, decoy_size=RRR_DECOY_SIZE))
