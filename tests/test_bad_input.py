"""User mistakes get one clear error naming the file, row or key; skip_bad skips and counts."""
import json
import shutil

import pytest

from omnilm.cli import main
from omnilm.data.images import load_image
from omnilm.data.sources import load_samples
from omnilm.errors import DataError, MediaError
from omnilm.training.loop import train
from tests.conftest import CONFIGS, tiny_recipe


def broken_copy(tiny_data, tmp_path):
    """A copy of the COCO fixture with a corrupt image, a missing image and a malformed row."""
    root = tmp_path / "coco"
    shutil.copytree(tiny_data["root"] / "coco", root)
    images = sorted((root / "train2017").iterdir())
    images[0].write_bytes(b"this is not a jpeg")
    images[1].unlink()
    ann_file = root / "annotations" / "captions_train2017.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][5] = {"image_id": 3}  # no caption
    ann_file.write_text(json.dumps(data))
    return ann_file, root / "train2017", images


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="image not found: .*nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(MediaError, match="cannot read image .*bad.jpg"):
        load_image(bad)


def test_malformed_row_names_file_and_row(tiny_data, tmp_path):
    ann_file, image_dir, _ = broken_copy(tiny_data, tmp_path)
    recipe = tiny_recipe(tiny_data, tmp_path, data={"path": str(ann_file), "image_dir": str(image_dir)})
    with pytest.raises(DataError, match=r"captions_train2017.json annotation #5: missing field 'caption'.*skip_bad"):
        load_samples(recipe.data)


def test_skip_bad_skips_and_counts_rows_and_images(tiny_data, tmp_path, caplog):
    ann_file, image_dir, _ = broken_copy(tiny_data, tmp_path)
    recipe = tiny_recipe(tiny_data, tmp_path, data={"path": str(ann_file), "image_dir": str(image_dir),
                                                    "skip_bad": True},
                         train={"max_steps": 12, "batch_size": 8, "save_every": 100})
    loaded = load_samples(recipe.data)
    assert loaded.skipped == 1 and len(loaded.samples) == 95
    result = train(recipe, progress=False)
    # 12 steps x 8 = 96 draws over one epoch of 95 samples (88 used, the rest dropped as a partial
    # batch): the two captions of each unreadable image are skipped each time they are drawn.
    assert result.state.skipped >= 1 and result.state.samples + result.state.skipped == 96
    assert "bad samples were skipped" in caplog.text


def test_without_skip_bad_an_unreadable_image_stops_training_with_its_name(tiny_data, tmp_path):
    ann_file, image_dir, images = broken_copy(tiny_data, tmp_path)
    data = json.loads(ann_file.read_text())
    del data["annotations"][5]
    ann_file.write_text(json.dumps(data))
    recipe = tiny_recipe(tiny_data, tmp_path, data={"path": str(ann_file), "image_dir": str(image_dir)},
                         train={"max_steps": 12, "batch_size": 8})
    with pytest.raises(MediaError, match=rf"({images[0].name}|{images[1].name})"):
        train(recipe, progress=False)


def test_cli_prints_one_line_errors(tmp_path, capsys):
    assert main(["train", str(CONFIGS / "tiny-stage1.yaml"), "--train.batch_size=many"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "omnilm: error: train.batch_size: expected int, got str 'many'"
    assert main(["train", str(CONFIGS / "tiny-stage1.yaml"), "--data.path=" + str(tmp_path / "x.json"),
                 "--train.output_dir=" + str(tmp_path / "run")]) == 2
    assert "data.path: file not found" in capsys.readouterr().err
