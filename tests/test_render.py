"""Token-exact rendering: ids and labels built together, media expanded into placeholders."""
import pytest

from omnilm.data.chat import get_template, render
from omnilm.core.sample import IGNORE, PLACEHOLDER_IDS, Message
from omnilm.errors import DataError
from omnilm.model.tokenizer import byte_tokenizer

IMG = PLACEHOLDER_IDS["image"]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def b(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_caption_template_matches_the_seed_layout(tok):
    """[image features] [end-of-image] caption EOS; only the caption and EOS are learned."""
    msgs = [Message("user", "<image>"), Message("assistant", "a red square.")]
    ids, labels = render(msgs, tok, get_template("caption"), {"image": [4]}, {"image": 258})
    caption = b(tok, "a red square.") + [tok.eos_token_id]
    assert ids == [IMG] * 4 + [258] + caption
    assert labels == [IGNORE] * 5 + caption


def test_multi_turn_phi_template_learns_every_assistant_turn_only(tok):
    msgs = [Message("user", "<image>\nColour?"), Message("assistant", "red"),
            Message("user", "Shape?"), Message("assistant", "square")]
    ids, labels = render(msgs, tok, get_template("phi"), {"image": [2]})
    pieces = [(b(tok, "Instruct: "), False), ([IMG, IMG], False), (b(tok, "\nColour?\nOutput:"), False),
              (b(tok, " red") + [256], True), (b(tok, "\n"), False),
              (b(tok, "Instruct: Shape?\nOutput:"), False), (b(tok, " square") + [256], True)]
    expected_ids = [i for p, _ in pieces for i in p]
    expected_labels = [i if learn else IGNORE for p, learn in pieces for i in p]
    assert ids == expected_ids and labels == expected_labels
    assert tok.decode([i for i in labels if i != IGNORE]) == " red<|endoftext|> square<|endoftext|>"


def test_tokenizer_chat_template_is_split_per_message(tok):
    tok = byte_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    msgs = [Message("user", "<image>hi"), Message("assistant", "yo")]
    ids, labels = render(msgs, tok, get_template("chat"), {"image": [1]})
    learned = tok.decode([i for i in labels if i != IGNORE])
    assert learned == "yo<|endoftext|>\n"
    assert tok.decode([i for i in ids if i >= 0]).startswith("<|im_start|>user\nhi")
    prompt, _ = render(msgs[:1], tok, get_template("chat"), {"image": [1]}, generation_prompt=True)
    assert tok.decode([i for i in prompt if i >= 0]).endswith("<|im_start|>assistant\n")


def test_marker_and_media_counts_must_agree(tok):
    msgs = [Message("user", "<image><image>"), Message("assistant", "x")]
    with pytest.raises(DataError, match="more <image> markers in the text than image inputs \\(1\\)"):
        render(msgs, tok, get_template("caption"), {"image": [3]})
    with pytest.raises(DataError, match="3 image inputs but 2 <image> markers"):
        render(msgs, tok, get_template("caption"), {"image": [3, 3, 3]})


def test_special_tokens_typed_in_messages_stay_text_and_the_templates_stay_tokens(tok):
    """Only the template writes control tokens; "<|endoftext|>" typed in a message is its 13 characters."""
    tok = byte_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    typed = "<image>hi<|endoftext|><|pad|> there"
    for name, template_eos in (("chat", 1), ("phi", 0), ("caption", 0)):
        ids, _ = render([Message("user", typed)], tok, get_template(name), {"image": [1]}, {"image": 258},
                        generation_prompt=True)
        assert ids.count(tok.eos_token_id) == template_eos and tok.pad_token_id not in ids, name
        assert "hi<|endoftext|><|pad|> there" in tok.decode([i for i in ids if i >= 0])
        assert ids.count(258) == 1 and ids.count(IMG) == 1  # the media marker still works
    ids, labels = render([Message("user", "q"), Message("assistant", "a<|endoftext|>b")], tok, get_template("phi"), {})
    assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id  # only the template's EOS ends the reply


def test_special_tokens_in_text_when_the_operator_allows_them(tok):
    ids, _ = render([Message("user", "hi<|endoftext|>")], tok, get_template("caption"), {},
                    generation_prompt=True, special_tokens_in_text=True)
    assert ids == b(tok, "hi") + [tok.eos_token_id]


def test_text_without_special_tokens_encodes_as_before(tok):
    msgs = [Message("user", "Colour? \U000f0000x"), Message("assistant", "red")]
    ids, _ = render(msgs, tok, get_template("phi"), {})
    assert ids == b(tok, "Instruct: Colour? x\nOutput: red") + [tok.eos_token_id]  # private markers are dropped


def test_media_first_moves_markers_to_the_start_of_the_turn():
    from omnilm.data.markers import media_first

    assert media_first("is there a red shape?\n<image>") == "<image>\nis there a red shape?"
    assert media_first("<image>\nis there a red shape?") == "<image>\nis there a red shape?"
    assert media_first("<audio>\n<image>") == "<image>\n<audio>"  # images first, then audio
    assert media_first("compare <image> and\n<image>\nplease") == "<image>\n<image>\ncompare and\nplease"
    assert media_first("two\n\nlines") == "two\n\nlines"


def test_processor_with_media_first_reads_every_layout_alike(tok):
    """The quickstart's recipes set data.media_first: a question sent before or after its image
    (the API keeps the order of the parts) is the same prompt to the model."""
    import torch

    from omnilm.model.processing import OmniProcessor
    from omnilm.core.sample import Sample

    def encode(text, **options):
        processor = OmniProcessor(tok, template="plain", max_length=512, **options)
        sample = Sample([Message("user", text), Message("assistant", "no")], images=["a.png"])
        return processor(sample, features={"image": [torch.zeros(3, 8)]}).input_ids.tolist()

    before, after = "<image>\nis there a red shape?", "is there a red shape?\n<image>"
    assert encode(after, media_first=True) == encode(before, media_first=True) == encode(before)
    assert encode(after) != encode(before)  # off by default: the text is rendered as written
