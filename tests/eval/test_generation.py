import warnings

import pytest
import torch

from panda.eval.generation import extract_answer, fill_id, generate_answers, generate_texts, left_pad
from panda.eval.loading import encode


@pytest.mark.parametrize(("generated", "expected"), [
    ("A", "A"),                                 # letter first
    ("B。因为文章说了", "B"),
    ("我认为本题的答案是C，不是D", "C"),          # letter later; the first one wins
    ("答案：D或者A", "D"),
    ("不知道", None),                            # absent
    ("abcd", None),                             # lower case is not an answer
    ("", None),
    ("E", None),                                # only A–D, whatever the number of options (answer_clean)
    ("E。不对，是B", "B"),                        # an E is skipped, the first A–D after it wins
    ("C", "C"),                                 # A–D even for a two-option question
])
def test_extract_answer(generated, expected):
    assert extract_answer(generated) == expected


class FixedContinuation(torch.nn.Module):
    """A stand-in model whose ``generate`` echoes the prompt ids and appends fixed new tokens."""

    def __init__(self, new_ids: list[int]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new_ids = new_ids
        self.seen = None

    def generate(self, input_ids, attention_mask, generation_config):
        self.seen = (input_ids, attention_mask, generation_config)
        new = torch.tensor([self.new_ids] * input_ids.shape[0])
        return torch.cat([input_ids, new], dim=1)


def test_letter_only_in_the_prompt_is_unparseable(tokenizer):
    prompt = "选项：\nA: 公园\nB: 学校\n\n\n本题的答案是："
    model = FixedContinuation(tokenizer("我不知道", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    [answer] = generate_answers(model, tokenizer, [prompt])
    assert answer == {"generated": "我不知道", "prediction": None}
    model.new_ids = tokenizer("他们去B", add_special_tokens=False)["input_ids"]
    assert generate_answers(model, tokenizer, [prompt])[0]["prediction"] == "B"


def test_over_long_prompts_keep_their_first_2048_tokens_and_warn(tokenizer):
    """The reference's ``truncation=True, max_length=2048`` cut the END (right side, the default) of the prompt."""
    model = FixedContinuation(tokenizer("A", add_special_tokens=False)["input_ids"])
    long_prompt = "人民日报社论指出，今年经济发展很快。" * 400 + "本题的答案是："
    ids = encode(tokenizer, long_prompt)
    assert len(ids) > 2048
    with pytest.warns(UserWarning, match="1 of 2 prompt.*longer than 2048 tokens were cut"):
        generate_texts(model, tokenizer, [long_prompt, "你好"], max_new_tokens=1)
    input_ids, attention_mask, _ = model.seen
    assert input_ids.shape[1] == 2048 and input_ids[0].tolist() == ids[:2048]  # BOS + the first 2047 text tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate_texts(model, tokenizer, [long_prompt], max_new_tokens=1, max_prompt_tokens=None)
    assert model.seen[0][0].tolist() == ids


def test_generation_stops_at_the_models_eos_as_the_reference_did(tiny_model, tokenizer):
    """transformers 4.28.1 fell back to ``model.generation_config.eos_token_id`` when the config named none."""
    model = FixedContinuation([])
    model.generation_config = type("G", (), {"eos_token_id": 7})()
    generate_texts(model, tokenizer, ["你好"], max_new_tokens=3)
    assert model.seen[2].eos_token_id == 7
    prompt = encode(tokenizer, "你好")
    free = tiny_model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    tiny_model.generation_config.eos_token_id = free[1]  # make the second greedy token the model's EOS
    [text] = generate_texts(tiny_model, tokenizer, ["你好"], max_new_tokens=6)
    assert text == tokenizer.decode(free[:2], skip_special_tokens=True)  # stopped right after it
    assert len(set(free[:2])) == 2 and text != tokenizer.decode(free, skip_special_tokens=True)


def test_a_tokenizer_without_pad_token_evaluates_with_an_existing_id_masked(tiny_model, tokenizer):
    """Stock LLaMA/BELLE/Linly tokenizers have no pad token: left padding uses EOS, hidden by the mask."""
    prompts = ["阅读下面的文章：\n\n人民日报社论指出，今年经济发展很快。", "你好"]
    padded = generate_texts(tiny_model, tokenizer, prompts, max_new_tokens=5)
    pad_less = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    pad_less.pad_token = None
    assert pad_less.pad_token_id is None and fill_id(pad_less) == tokenizer.eos_token_id
    assert generate_texts(tiny_model, pad_less, prompts, max_new_tokens=5) == padded


def test_prompts_are_left_padded_with_bos_and_decoding_is_pinned_to_greedy(tokenizer):
    model = FixedContinuation(tokenizer("A", add_special_tokens=False)["input_ids"])
    generate_texts(model, tokenizer, ["你好", "人民日报社论"], max_new_tokens=7)
    input_ids, attention_mask, config = model.seen
    short, long = encode(tokenizer, "你好"), encode(tokenizer, "人民日报社论")
    assert short[0] == tokenizer.bos_token_id and len(short) < len(long)
    pad = len(long) - len(short)
    assert input_ids[0].tolist() == [tokenizer.pad_token_id] * pad + short
    assert attention_mask[0].tolist() == [0] * pad + [1] * len(short)
    assert input_ids[1].tolist() == long and attention_mask[1].all()
    assert (config.do_sample, config.num_beams, config.max_new_tokens, config.repetition_penalty) == (False, 1, 7, 1.0)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny_model, tokenizer):
    prompts = ["阅读下面的文章：\n\n人民日报社论指出，今年经济发展很快。\n\n本题的答案是：", "你好", "选项：\nA: 公园"]
    batched = generate_texts(tiny_model, tokenizer, prompts, max_new_tokens=12)
    alone = [generate_texts(tiny_model, tokenizer, [prompt], max_new_tokens=12)[0] for prompt in prompts]
    assert batched == alone
    assert all(text and not text.startswith(prompt[:4]) for text, prompt in zip(batched, prompts))


def test_left_pad_shapes():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
