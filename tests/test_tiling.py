"""`model.image.tiling`: anyres (LLaVA-NeXT) and split (nanoVLM / Idefics3) tiles.

Token counts are held to transformers' own LLaVA-NeXT processor (anyres) and to counts worked out
by hand (split); a tiny model trains with each; the anyres export answers as omnilm does in
transformers' LlavaNextForConditionalGeneration."""
import pytest
import torch
from PIL import Image
from transformers import (LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
                          LlavaNextProcessor)
from transformers.image_processing_utils import select_best_resolution

from omnilm.config import EncoderConfig, load_recipe
from omnilm.core.sample import PLACEHOLDER_IDS, Message, Sample
from omnilm.data.collate import collate
from omnilm.data.feature_cache import encoder_identity
from omnilm.data.fixtures import draw_shape
from omnilm.errors import ConfigError, OmniError, PlaceholderMismatch
from omnilm.model.build import build_model, materialize_random
from omnilm.model.export import export
from omnilm.model.llava_format import NotExpressible
from omnilm.model.processing import OmniProcessor
from omnilm.model.saved import load_pretrained
from omnilm.model.tiling import Tiles, Tiling, grid_of, max_tokens, most_tiles, tiling_of, token_count
from omnilm.model.tokenizer import byte_tokenizer
from tests.conftest import CONFIGS
from tests.test_export_llava import llava_outputs, omnilm_outputs, tiny_run

# (height, width): squares, wide and tall strips, odd sizes, smaller and larger than every pinpoint
SIZES = [(336, 336), (480, 640), (640, 480), (100, 1000), (1000, 100), (719, 1281), (1281, 719), (50, 60),
         (2000, 2000), (337, 673), (999, 333), (333, 999), (7, 500), (500, 7), (1024, 768), (612, 1087)]
PINPOINTS = {"default": None, "wide": [[336, 1344], [672, 672], [1008, 1008], [336, 336]]}


def transformers_counts(tile: int, patch: int, pinpoints: list, sizes, strategy: str = "default") -> list[int]:
    """What transformers' LlavaNextProcessor puts in the prompt for each image size."""
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = LlavaNextImageProcessorPil(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                                        image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                                   vision_feature_select_strategy=strategy, image_token="<image>",
                                   num_additional_image_tokens=1 if strategy == "default" else 0)
    return processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens


@pytest.mark.parametrize("pinpoints", PINPOINTS.values(), ids=PINPOINTS.keys())
@pytest.mark.parametrize("tile, patch", [(336, 14), (224, 16), (384, 16)])
def test_anyres_counts_equal_transformers_llava_next_processor(tile, patch, pinpoints):
    if pinpoints is not None:
        pinpoints = [[h * tile // 336, w * tile // 336] for h, w in pinpoints]
    tiling = tiling_of(EncoderConfig(tiling="anyres", grid_pinpoints=pinpoints), tile, patch)
    ours = [token_count(tiling, grid_of(tiling, h, w)) for h, w in SIZES]
    assert ours == transformers_counts(tile, patch, [list(p) for p in tiling.grid_pinpoints], SIZES)


def test_anyres_tiles_are_the_llava_next_grid():
    tiling = tiling_of(EncoderConfig(tiling="anyres"), 336, 14)
    for height, width in SIZES:
        grid = grid_of(tiling, height, width)
        best = select_best_resolution([height, width], [list(p) for p in tiling.grid_pinpoints])
        assert (grid.rows * 336, grid.cols * 336) == tuple(best)


@pytest.mark.parametrize("height, width, max_tiles, grid, tokens", [
    (224, 224, 4, (0, 0), 197),  # one tile's worth: the global view alone, 196 patches + its marker
    (200, 100, 4, (0, 0), 197),
    (448, 448, 4, (2, 2), 5 * 197),  # 4 tiles + global, each with a marker
    (300, 900, 4, (2, 2), 5 * 197),  # 2 x 5 tiles: cols lowered to 4, 3, 2
    (1000, 250, 9, (4, 2), 9 * 197),  # 5 x 2: rows lowered to 4
    (900, 900, 9, (3, 3), 10 * 197),  # 5 x 5: cols, rows, cols, rows lowered in turn
    (900, 900, 16, (4, 4), 17 * 197),
])
def test_split_counts_by_hand(height, width, max_tiles, grid, tokens):
    tiling = Tiling("split", 224, 14, max_tiles=max_tiles)  # 224 px tiles of 16 px patches: 196 each
    found = grid_of(tiling, height, width)
    assert (found.rows, found.cols) == grid
    assert token_count(tiling, found) == tokens


def tiny_model(tmp_path, tiling: str, **image):
    recipe = load_recipe(CONFIGS / "tiny-stage1.yaml", {"model": {"image": {"tiling": tiling, **image}},
                                                        "data": {"max_length": 256}})
    return build_model(materialize_random(recipe, tmp_path / "base"))


def caption(image: Image.Image, text: str = "red") -> Sample:
    return Sample([Message("user", "<image>"), Message("assistant", text)], images=[image])


IMAGES = [(64, 40), (20, 90), (32, 32), (100, 100), (33, 97)]  # PIL sizes (width, height)


@pytest.mark.parametrize("tiling", ["anyres", "split"])
def test_the_processor_counts_from_the_size_what_the_model_lays_out(tmp_path, tiling):
    model, processor = tiny_model(tmp_path, tiling)
    encoded = [processor(caption(Image.new("RGB", size, "blue"))) for size in IMAGES]
    for item, size in zip(encoded, IMAGES):
        tiles = item.media["image"][0]
        assert isinstance(tiles, Tiles)
        placeholders = int((item.input_ids == PLACEHOLDER_IDS["image"]).sum())
        tiling_ = processor.image_tiling
        assert placeholders == token_count(tiling_, grid_of(tiling_, size[1], size[0]))
    batch = collate(encoded, pad_id=0)
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.media)  # raises PlaceholderMismatch if the counts differ
    assert embeds.shape[:2] == batch.input_ids.shape


def test_the_anyres_counts_in_omnilm_equal_transformers_for_the_tiny_tower(tmp_path):
    _, processor = tiny_model(tmp_path, "anyres")
    sizes = [(h, w) for w, h in IMAGES]
    ours = [int((processor(caption(Image.new("RGB", (w, h)))).input_ids < 0).sum()) for h, w in sizes]
    points = [list(p) for p in processor.image_tiling.grid_pinpoints]
    assert ours == transformers_counts(32, 8, points, sizes)


def test_a_wrong_count_is_a_placeholder_mismatch_naming_both(tmp_path):
    model, processor = tiny_model(tmp_path, "anyres")
    item = processor(caption(Image.new("RGB", (64, 40))))
    other = processor(caption(Image.new("RGB", (20, 90))))
    with pytest.raises(PlaceholderMismatch, match=r"70 placeholder positions .* 52 feature vectors"):
        model.embed(item.input_ids[None], {"image": other.media["image"]})


@pytest.mark.parametrize("tiling", ["none", "anyres", "split"])
def test_a_tiny_model_trains_a_step_with_each_tiling(tmp_path, tiling):
    model, processor = tiny_model(tmp_path, tiling)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("projectors.")
    batch = collate([processor(caption(draw_shape("red", "circle", size=s, seed=1))) for s in (40, 70, 90)], 0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(**batch.model_inputs()).loss
        optimizer.zero_grad()
        loss.backward()
        if tiling == "anyres":
            assert model.projectors["image"].layout.image_newline.grad.abs().sum() > 0
        if tiling == "split":
            assert model.projectors["image"].layout.markers.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_the_processor_saves_and_loads_its_tiling(tmp_path):
    _, processor = tiny_model(tmp_path, "split", max_tiles=6)
    processor.save_pretrained(tmp_path / "proc")
    loaded = OmniProcessor.from_pretrained(tmp_path / "proc")
    assert loaded.image_tiling == processor.image_tiling and loaded.image_tiling.max_tiles == 6
    image = Image.new("RGB", (100, 30), "green")
    assert torch.equal(loaded(caption(image)).media["image"][0].pixels, processor(caption(image)).media["image"][0].pixels)


def test_the_cache_identity_differs_by_tiling(tmp_path):
    identities = [encoder_identity(EncoderConfig(tiling="none")), encoder_identity(EncoderConfig(tiling="anyres")),
                  encoder_identity(EncoderConfig(tiling="split")),
                  encoder_identity(EncoderConfig(tiling="split", max_tiles=9)),
                  encoder_identity(EncoderConfig(tiling="anyres", grid_pinpoints=[[32, 64], [64, 32]]))]
    assert len({repr(i) for i in identities}) == len(identities)
    assert identities[0] == encoder_identity(EncoderConfig())  # caches made before tiling stay valid


@pytest.mark.parametrize("tiling", ["anyres", "split"])
def test_cached_tile_features_give_what_the_tiles_give_and_train(tiny_data, tmp_path, tiling):
    from omnilm.data.feature_cache import FeatureCache, media_key
    from omnilm.training.cache import cache_features
    from omnilm.training.loop import train
    from tests.conftest import tiny_recipe

    sections = dict(model={"image": {"tiling": tiling}}, data={"max_length": 256, "limit": 8},
                    train={"max_steps": 2, "batch_size": 4})
    recipe = tiny_recipe(tiny_data, tmp_path, **sections)
    images = [Image.new("RGB", (64, 40), "red"), draw_shape("blue", "circle", size=90, seed=5)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    cache = cache_features(recipe, out=str(tmp_path / "cache"), progress=False, images=[str(p) for p in paths])
    reopened = FeatureCache.open(tmp_path / "cache", encoder_identity(recipe.model.image))
    model, processor = build_model(materialize_random(recipe, tmp_path / "run" / "base"))
    for path in paths:
        cached = reopened.get(media_key(str(path)))
        sample = Sample([Message("user", "<image>"), Message("assistant", "red")], images=[str(path)])
        from_pixels, from_cache = processor(sample), processor(sample, features={"image": [cached]})
        assert torch.equal(from_pixels.input_ids, from_cache.input_ids)
        assert cached.features.shape[0] == from_pixels.media["image"][0].grid.views
        with torch.no_grad():
            a = model.embed(from_pixels.input_ids[None], media=from_pixels.media)
            b = model.embed(from_cache.input_ids[None], features=from_cache.features)
        assert (a - b).abs().max() < 2e-2  # the cache stores float16
    assert len(cache) == len(paths)
    with pytest.raises(OmniError, match="made by encoder"):
        FeatureCache.open(tmp_path / "cache", encoder_identity(EncoderConfig(**{**recipe.model.image.__dict__,
                                                                                "tiling": "none",
                                                                                "max_tiles": None,
                                                                                "grid_pinpoints": None})))
    cached_run = tiny_recipe(tiny_data, tmp_path / "cached", **sections)
    cache_features(cached_run, out=str(tmp_path / "train-cache"), progress=False)
    cached_run.data.feature_cache = str(tmp_path / "train-cache")
    assert train(cached_run, progress=False).state.step == 2


@pytest.mark.parametrize("image, message", [
    ({"grid_pinpoints": [[64, 64]]}, "grid_pinpoints: only for tiling: anyres"),
    ({"max_tiles": 4}, "max_tiles: only for tiling: split"),
    ({"tiling": "anyres", "grid_pinpoints": [[64]]}, r"grid_pinpoints\[0\]: expected \[height, width\]"),
    ({"tiling": "split", "projector": {"tokens_per_feature": 2}}, "tokens_per_feature: must be 1 with tiling"),
    ({"tiling": "diagonal"}, "model.image.tiling: 'diagonal' is not one of none, anyres, split"),
])
def test_bad_tiling_settings_are_one_line_errors(image, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(CONFIGS / "tiny-stage1.yaml", {"model": {"image": image}})


def test_pinpoints_off_the_tile_size_and_kept_cls_are_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"grid_pinpoints\[0\] = \[48, 64\]: each side must be a multiple of .* 32"):
        tiny_model(tmp_path, "anyres", grid_pinpoints=[[48, 64]])
    with pytest.raises(ConfigError, match="needs drop_cls: true"):
        tiny_model(tmp_path / "cls", "anyres", drop_cls=False)


def test_efficientnet_has_no_tiling():
    with pytest.raises(ConfigError, match="tiling: for clip, siglip encoders only"):
        load_recipe(overrides={"model": {"image": {"type": "efficientnet_lite0", "tiling": "split"}}})


@pytest.mark.parametrize("image, size", [({}, (96, 40)), ({"type": "siglip", "layer": -2}, (30, 70)),
                                         ({"grid_pinpoints": [[32, 96], [64, 64], [96, 32]]}, (50, 50))])
def test_anyres_export_answers_as_omnilm_does_in_llava_next(tmp_path, image, size):
    from tests.test_export_llava import TINY_SIGLIP

    settings = {"tiling": "anyres", **image}
    if settings.get("type") == "siglip":
        settings["random_config"] = TINY_SIGLIP
    run = tiny_run(tmp_path / "run", image=settings)
    model, processor = load_pretrained(run)
    with torch.no_grad():  # a newline that is not zero-like, so a misplaced one shows in the logits
        model.projectors["image"].layout.image_newline.mul_(20)
    export(model, processor, tmp_path / "next", "llava")
    picture = draw_shape("blue", "triangle", size=64, seed=2).resize(size)
    question = "What is it?"
    ids, logits, tokens = omnilm_outputs(model, processor, picture, question)
    next_ids, next_logits, next_tokens, config = llava_outputs(tmp_path / "next", picture, question,
                                                                    model_class=LlavaNextForConditionalGeneration)
    assert config.architectures == ["LlavaNextForConditionalGeneration"]
    assert next_ids.tolist() == ids.masked_fill(ids == PLACEHOLDER_IDS["image"], config.image_token_index).tolist()
    vocab = len(processor.tokenizer)
    assert (logits[:, :vocab] - next_logits[:, :vocab]).abs().max().item() < 1e-4
    assert next_tokens.tolist() == tokens.tolist()


def test_split_export_to_llava_is_refused_naming_the_missing_gguf_export(tmp_path):
    run = tiny_run(tmp_path / "run", image={"tiling": "split"})
    with pytest.raises(NotExpressible, match="split maps onto a GGUF idefics3 mmproj, which omnilm does not export yet"):
        export(*load_pretrained(run), tmp_path / "out", "llava")


@pytest.mark.parametrize("tiling", [tiling_of(EncoderConfig(tiling="anyres"), 336, 14),
                                    tiling_of(EncoderConfig(tiling="anyres", grid_pinpoints=PINPOINTS["wide"]), 336, 14),
                                    Tiling("split", 224, 14, max_tiles=6)], ids=["anyres", "anyres-wide", "split"])
def test_max_tokens_bounds_every_size_and_is_reached(tiling):
    sizes = SIZES + [(h, w) for h in range(10, 1400, 97) for w in range(10, 1400, 89)]
    counts = [token_count(tiling, grid_of(tiling, h, w)) for h, w in sizes]
    assert max(counts) == max_tokens(tiling)
    assert max(grid_of(tiling, h, w).views for h, w in sizes) == most_tiles(tiling)


def test_packing_counts_a_tiled_samples_real_length(tmp_path):
    _, processor = tiny_model(tmp_path, "anyres")
    items = [processor(caption(Image.new("RGB", size))) for size in IMAGES]
    batch = collate(items, pad_id=0, pack_to=256)
    assert int((batch.input_ids == PLACEHOLDER_IDS["image"]).sum()) == sum(
        token_count(processor.image_tiling, t.media["image"][0].grid) for t in items)
    # rows hold the samples' whole lengths (text + every tile token), nothing cut
    assert int((batch.input_ids != 0).sum()) == sum(len(t.input_ids) for t in items)
    assert batch.input_ids.shape[0] < len(items)  # several samples shared a row


@pytest.mark.parametrize("tiling", ["anyres", "split"])
def test_the_training_loop_runs_and_saves_a_tiled_model_that_loads(tiny_data, tmp_path, tiling, caplog):
    from omnilm.training.loop import train
    from tests.conftest import tiny_recipe

    recipe = tiny_recipe(tiny_data, tmp_path, model={"image": {"tiling": tiling, "projector": {"type": "resblock"}}},
                         data={"max_length": 256, "limit": 8}, train={"max_steps": 2, "batch_size": 4})
    with caplog.at_level("INFO", logger="omnilm.training"):
        result = train(recipe, progress=False)
    assert f"image tiling {tiling}: up to" in caplog.text
    model, processor = load_pretrained(result.run_dir)
    assert processor.image_tiling.kind == tiling
    image = draw_shape("green", "square", size=80, seed=4)
    _, logits, tokens = omnilm_outputs(model, processor, image, "What?")
    assert torch.isfinite(logits).all() and len(tokens) > 0


def test_pixel_shuffle_shrinks_each_tiles_grid_as_a_coarser_patch_would():
    # N x N patches merged into one: the counts of a tower with N-times-larger patches
    from omnilm.config import ProjectorConfig

    tiling = tiling_of(EncoderConfig(tiling="anyres", projector=ProjectorConfig(pixel_shuffle=2)), 336, 14)
    assert tiling.side == 12
    assert [token_count(tiling, grid_of(tiling, h, w)) for h, w in SIZES] == transformers_counts(
        336, 28, [list(p) for p in tiling.grid_pinpoints], SIZES)
    split = tiling_of(EncoderConfig(tiling="split", projector=ProjectorConfig(pixel_shuffle=2)), 384, 16)
    assert token_count(split, grid_of(split, 768, 768)) == 5 * (12 * 12 + 1)


@pytest.mark.parametrize("tiling", ["anyres", "split"])
def test_a_tiled_model_with_pixel_shuffle_lays_out_what_it_counts_and_trains(tmp_path, tiling):
    model, processor = tiny_model(tmp_path, tiling, projector={"type": "resblock", "pixel_shuffle": 2})
    encoded = [processor(caption(Image.new("RGB", size, "blue"))) for size in IMAGES]
    batch = collate(encoded, pad_id=0)
    loss = model(**batch.model_inputs()).loss  # PlaceholderMismatch if the layout's count differs
    loss.backward()
    assert model.projectors["image"].inner.inner.proj.weight.shape[1] == 32 * 4  # 2 x 2 patches side by side
    # 100 x 100 px on 32 px tiles of 4 x 4 patches, 2 x 2 after the shuffle: a 2 x 2 grid either way
    expected = {"anyres": 2 * 2 + 4 * (4 + 1), "split": 5 * (2 * 2 + 1)}[tiling]
    assert int((encoded[3].input_ids < 0).sum()) == expected


@pytest.mark.parametrize("tiling", ["anyres", "split"])
def test_tiled_prompts_of_different_sizes_generate_batched_as_one_by_one(tmp_path, tiling):
    from omnilm.generation import generate
    from omnilm.generation_settings import GenerationSettings

    model, processor = tiny_model(tmp_path, tiling)
    prompts = [Sample([Message("user", f"<image>\n{q}")], images=[draw_shape("red", "circle", size=s, seed=s)])
               for q, s in (("what?", 30), ("which shape is it?", 90), ("colour", 60))]
    settings = GenerationSettings(max_new_tokens=8)
    batched = generate(model, processor, prompts, settings)
    single = [generate(model, processor, [p], settings)[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]
    assert len({c.prompt_tokens for c in batched}) == len(prompts)  # the images' tokens differ by size
