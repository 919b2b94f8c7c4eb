import pytest
import torch

from panda.generate.engine import RequestError, Sampling, generate_all, request_ids
from panda.weights.loading import load_pretrained

PROMPTS = ["人民日报", "今天的天气很好，我们去公园散步吧。", "中国"]


@pytest.fixture()
def loaded(model_dir):
    return load_pretrained(model_dir, device="cpu")


def prompt_rows(loaded):
    return [request_ids({"prompt": p}, loaded) for p in PROMPTS]


def test_greedy_batched_output_equals_model_generate_on_each_prompt(loaded):
    rows = prompt_rows(loaded)
    replies = dict(generate_all(loaded, rows, Sampling(max_new_tokens=12), batch_size=2))
    for i, row in enumerate(rows):
        with torch.no_grad():
            direct = loaded.model.generate(torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                                           do_sample=False, max_new_tokens=12, pad_token_id=loaded.tokenizer.pad_token_id)
        assert replies[i].token_ids == direct[0, len(row):].tolist()
        assert replies[i].prompt_tokens == len(row) and replies[i].stop_reason == "length"
        assert replies[i].text == loaded.tokenizer.decode(replies[i].token_ids, skip_special_tokens=True)


def test_sampling_is_reproducible_by_seed(loaded):
    rows = prompt_rows(loaded)

    def sample(seed):
        sampling = Sampling(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=seed)
        return [reply.token_ids for _, reply in sorted(generate_all(loaded, rows, sampling, batch_size=2))]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_eos_and_stop_strings_end_a_reply(loaded):
    rows = prompt_rows(loaded)[:1]
    greedy = dict(generate_all(loaded, rows, Sampling(max_new_tokens=12), batch_size=1))[0]
    stop = greedy.text[3:5]
    assert stop
    stopped = dict(generate_all(loaded, rows, Sampling(max_new_tokens=12, stop=[stop]), batch_size=1))[0]
    assert stopped.stop_reason == "stop_string" and stopped.text == greedy.text[:greedy.text.index(stop)]
    with torch.no_grad():  # make EOS the only likely token: the reply ends at once, EOS not counted as text
        loaded.model.lm_head.weight[loaded.tokenizer.eos_token_id] += 100.0
        loaded.model.model.norm.weight.fill_(1.0)
    ended = dict(generate_all(loaded, rows, Sampling(max_new_tokens=12), batch_size=1))[0]
    assert (ended.stop_reason, ended.text, ended.output_tokens) == ("eos", "", 0)


def test_bad_requests_say_what_is_wrong(loaded):
    with pytest.raises(RequestError, match="exactly one of 'prompt' or 'messages'"):
        request_ids({"text": "x"}, loaded)
    with pytest.raises(RequestError, match="'prompt' must be a non-empty string"):
        request_ids({"prompt": 3}, loaded)
    with pytest.raises(RequestError, match=r"messages\[1\]: expected a 'assistant' message"):
        request_ids({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, loaded)
    with pytest.raises(RequestError, match="the last message must be the user's"):
        request_ids({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, loaded)
