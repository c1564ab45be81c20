"""projector.pixel_shuffle: N x N neighbouring patch tokens of a vision tower become one LLM token."""
import pytest
import torch
from conftest import tiny_recipe

from omnilm.core.sample import PLACEHOLDER_IDS, Message, Sample
from omnilm.data.collate import collate
from omnilm.errors import ConfigError
from omnilm.model.build import build_model
from omnilm.model.llava_format import NotExpressible, vision_choice
from omnilm.model.omni import OmniLM
from omnilm.model.processing import OmniProcessor
from omnilm.model.projector import PixelShuffle, pixel_shuffle
from omnilm.model.saved import write_model_folder
from omnilm.training.loop import train
from omnilm.training.stages import apply_stage

# The tiny recipe's CLIP tower: 32 px images, 8 px patches -> a 4 x 4 grid of 16 patch tokens.
SHUFFLED = {"model": {"image": {"projector": {"type": "resblock", "pixel_shuffle": 2}}}}


def shuffled_recipe(tiny_data, tmp_path, n=2, **image):
    return tiny_recipe(tiny_data, tmp_path, model={"image": {**image, "projector": {"pixel_shuffle": n}}})


def images(tiny_data, n):
    return sorted(tiny_data["coco_images"].iterdir())[:n]


def caption_sample(tiny_data, n_images=1):
    return Sample([Message("user", " ".join(["<image>"] * n_images)), Message("assistant", "a red square.")],
                  images=images(tiny_data, n_images))


def test_a_4x4_grid_becomes_2x2_blocks_of_neighbours():
    grid = torch.tensor([[0., 1., 2., 3.],
                         [4., 5., 6., 7.],
                         [8., 9., 10., 11.],
                         [12., 13., 14., 15.]])
    patches = torch.stack([grid.flatten(), -grid.flatten()], dim=1)  # [16, 2]: two channels per patch
    merged = pixel_shuffle(patches, 2)
    expected = torch.tensor([
        [0., -0., 1., -1., 4., -4., 5., -5.],  # top-left block: patches 0, 1 (row 0), 4, 5 (row 1)
        [2., -2., 3., -3., 6., -6., 7., -7.],  # top-right
        [8., -8., 9., -9., 12., -12., 13., -13.],  # bottom-left
        [10., -10., 11., -11., 14., -14., 15., -15.],  # bottom-right
    ])
    assert torch.equal(merged, expected)


def test_each_image_is_shuffled_on_its_own_grid():
    first, second = torch.arange(16.).reshape(16, 1), torch.arange(16., 32.).reshape(16, 1)
    out = PixelShuffle(torch.nn.Identity(), 2)([first, second])  # [8, 4]
    assert torch.equal(out[:4], pixel_shuffle(first, 2)) and torch.equal(out[4:], pixel_shuffle(second, 2))


def test_features_not_on_a_square_grid_are_refused():
    with pytest.raises(Exception, match="square patch grid .* got 15 patch tokens"):
        pixel_shuffle(torch.zeros(15, 3), 2)


def test_placeholder_counts_match_the_shuffled_features(tiny_data, tmp_path):
    model, processor = build_model(shuffled_recipe(tiny_data, tmp_path))
    assert model.projectors["image"].inner.proj.in_features == 4 * model.encoders["image"].hidden_size
    encoded = [processor(caption_sample(tiny_data, 2))]
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    assert int((batch.input_ids == PLACEHOLDER_IDS["image"]).sum()) == 2 * 16 // 4
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.media)  # raises PlaceholderMismatch if they differ
        features = model.encoders["image"](batch.media["image"])
        expected = model.projectors["image"].inner(torch.cat([pixel_shuffle(f, 2) for f in features]))
    torch.testing.assert_close(embeds[batch.input_ids == PLACEHOLDER_IDS["image"]], expected)
    # cached encoder features (the un-shuffled patches) count the same
    cached = processor(caption_sample(tiny_data, 2), features={"image": features})
    assert torch.equal(cached.input_ids, encoded[0].input_ids)


def test_gradients_reach_the_projector_only(tiny_data, tmp_path):
    model, processor = build_model(shuffled_recipe(tiny_data, tmp_path))
    apply_stage(model, "align")
    batch = collate([processor(caption_sample(tiny_data))] * 2, processor.tokenizer.pad_token_id)
    model.train()
    model(**batch.model_inputs()).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(name.startswith("projectors.image.inner.") for name in with_grad)
    assert all(p.grad is None for p in model.encoders.parameters())


def test_a_tiny_model_trains_with_it_and_saves_it(tiny_data, tmp_path):
    fast = {"max_steps": 4, "batch_size": 2, "save_every": 4, "log_every": 1, "warmup_steps": 0}
    recipe = tiny_recipe(tiny_data, tmp_path, train=fast, **SHUFFLED)
    trained = {}
    result = train(recipe, progress=False, callbacks=[lambda state, model: trained.update(model=model)])
    assert result.state.step == 4 and all(torch.isfinite(torch.tensor(loss)) for loss in result.losses)
    model = trained["model"].eval()
    _, processor = build_model(recipe)
    folder = write_model_folder(model, processor, tmp_path / "folder")
    loaded, again = OmniLM.from_pretrained(folder), OmniProcessor.from_pretrained(folder)
    assert loaded.config.encoder("image").projector.pixel_shuffle == 2 and again.pixel_shuffle == {"image": 2}
    assert isinstance(loaded.projectors["image"], PixelShuffle)
    prompt = Sample([Message("user", "<image> what is it?")], images=images(tiny_data, 1))
    encoded = again.encode_prompt(prompt)
    assert torch.equal(encoded.input_ids, processor.encode_prompt(prompt).input_ids)
    with torch.no_grad():
        logits = [m(encoded.input_ids[None], media=encoded.media).logits for m in (loaded, model)]
    torch.testing.assert_close(logits[0], logits[1])


def test_a_grid_that_does_not_divide_is_refused_at_load(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"pixel_shuffle = 3: the tower's 4 x 4 patch grid .* does not divide by 3"):
        build_model(shuffled_recipe(tiny_data, tmp_path, n=3))


def test_the_cls_token_is_refused(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="pixel_shuffle = 2 needs drop_cls: true"):
        build_model(shuffled_recipe(tiny_data, tmp_path, drop_cls=False))


@pytest.mark.parametrize("n", [0, 5])
def test_only_1_to_4_are_accepted(tiny_data, tmp_path, n):
    expected = rf"model.image.projector.pixel_shuffle = {n}: must be an integer in \[1, 4\]"
    with pytest.raises(ConfigError, match=expected):
        shuffled_recipe(tiny_data, tmp_path, n=n)


def test_encoders_without_a_patch_grid_are_refused(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="pixel_shuffle: for encoders with a square patch grid .* not efficientnet"):
        tiny_recipe(tiny_data, tmp_path, model={"image": {"type": "efficientnet_lite0", "random_config": {},
                                                          "drop_cls": True, "projector": {"pixel_shuffle": 2}}})


def test_the_llava_export_refuses_it(tiny_data, tmp_path):
    recipe = shuffled_recipe(tiny_data, tmp_path)
    recipe.model.image.projector.type = "mlp2x_gelu"
    with pytest.raises(NotExpressible, match="pixel_shuffle: 2: LLaVA's projector reads every patch token"):
        vision_choice(recipe, None)
