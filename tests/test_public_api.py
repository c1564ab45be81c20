"""`from omnilm import ...`: the names the README's Python example uses, each documented."""
import subprocess
import sys

import pytest

import omnilm


def test_every_public_name_resolves_and_is_documented():
    for name in omnilm.PUBLIC:
        value = getattr(omnilm, name)
        assert value.__module__ == omnilm.PUBLIC[name] and value.__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'Procesor'"):
        omnilm.Procesor


def test_importing_omnilm_stays_light():
    """The command line imports omnilm first: torch and transformers load only when needed."""
    code = "import sys, omnilm; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_the_readme_python_example_runs(tmp_path):
    import torch

    from omnilm import GenerationSettings, Message, OmniLM, OmniProcessor, Sample, build_model, generate, load_recipe, stream
    from omnilm.data.fixtures import draw_shape
    from omnilm.model.saved import write_model_folder

    folder = write_model_folder(*build_model(load_recipe("configs/tiny-stage1.yaml"), base_dir=tmp_path / "base"),
                                tmp_path / "run")
    model = OmniLM.from_pretrained(folder, dtype=torch.float32)
    processor = OmniProcessor.from_pretrained(folder)
    image = tmp_path / "shape.png"
    draw_shape("red", "circle").save(image)
    question = Sample([Message("user", "<image>\nWhat colour is the shape?")], images=[str(image)])
    answer = generate(model, processor, [question], GenerationSettings(max_new_tokens=8))[0].text
    assert answer == "".join(stream(model, processor, question, GenerationSettings(max_new_tokens=8)))
