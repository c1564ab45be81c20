"""make_small_shapes: the resolution benchmark's data (bench/resolution.py). Each answer is checked
against the pixels drawn, not against what the generator meant to draw."""
import numpy as np
from PIL import Image

from omnilm.config import DataConfig
from omnilm.data.fixtures import COLORS, SHAPES, make_small_shapes
from omnilm.data.sources import load_samples

BACKGROUND = (245, 245, 245)
FILLED = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}  # shape area over its bounding box's


def drawn(path) -> tuple[str, str, int]:
    """(colour, shape, width in px) read back from an image: the colour of its non-background
    pixels, the shape from how much of their bounding box they fill."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    mask = (pixels != BACKGROUND).any(axis=-1)
    rows, cols = np.nonzero(mask)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    fill = mask.sum() / (height * width)
    shape = min(FILLED, key=lambda s: abs(FILLED[s] - fill))
    color = next(name for name, rgb in COLORS.items() if (pixels[mask] == rgb).all(axis=-1).mean() > 0.9)
    return color, shape, width


def test_every_answer_is_what_the_image_shows(tmp_path):
    path = make_small_shapes(tmp_path / "shapes", count=40, seed=3, size=200, radius=(8, 12))
    samples = load_samples(DataConfig(source="jsonl", path=str(path))).samples
    assert len(samples) == 3 * 40
    answers = {}
    for sample in samples:
        image_id, qtype = sample.id.split("-", 1)
        answers.setdefault(image_id, {})[qtype] = (sample.messages[0].content, sample.messages[1].content)
        assert sample.messages[0].content.startswith("<image>\n") and len(sample.images) == 1
    yes = 0
    for image_id, asked in answers.items():
        image = tmp_path / "shapes" / "images" / f"{image_id}.png"
        assert Image.open(image).size == (200, 200)
        color, shape, width = drawn(image)
        assert 16 <= width <= 25  # twice the half-width, +1 for the last pixel row
        assert asked["shape"][1] == shape and asked["color"][1] == color
        question, reply = asked["yes/no"]
        word = next(w for w in [*COLORS, *SHAPES] if f" {w}" in question)
        assert reply == ("yes" if word in (color, shape) else "no"), question
        yes += reply == "yes"
    assert 10 <= yes <= 30  # about even odds, so "always yes" is no answer


def test_the_same_seed_makes_the_same_set_and_a_rewrite_replaces_it_whole(tmp_path):
    first = make_small_shapes(tmp_path / "a", count=5, seed=1).read_text()
    assert make_small_shapes(tmp_path / "b", count=5, seed=1).read_text() == first
    assert make_small_shapes(tmp_path / "c", count=5, seed=2).read_text() != first
    make_small_shapes(tmp_path / "a", count=2, seed=1)
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == ["000000.png", "000001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary or old folder left
