"""The reference's scoring rules on whole records: unanswerable and fifth-option questions are scored wrong."""

import torch

from panda.eval.scoring import compute_metrics, make_metrics, score_batch, update_metrics


class Answers(torch.nn.Module):
    """Stand-in whose ``generate`` appends a fixed text; its log-likelihoods come from a tiny LLaMA."""

    def __init__(self, tiny_model, new_ids):
        super().__init__()
        self.inner, self.new_ids = tiny_model, new_ids
        self.config, self.generation_config = tiny_model.config, tiny_model.generation_config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        return self.inner(**kwargs)

    def generate(self, input_ids, attention_mask, generation_config):
        return torch.cat([input_ids, torch.tensor([self.new_ids] * input_ids.shape[0])], dim=1)


def test_no_correct_option_and_an_e_answer_are_wrong_under_both_protocols(tiny_model, tokenizer):
    questions = [
        {"index": 0, "prompt": "问题：\n选项：\nA: 甲\nB: 乙\n\n\n本题的答案是：", "options": ["甲", "乙"], "label": -1},
        {"index": 1, "prompt": "问题：\n选项：\nA: 一\nB: 二\nC: 三\nD: 四\nE: 五\n\n\n本题的答案是：",
         "options": ["一", "二", "三", "四", "五"], "label": 4},
    ]
    model = Answers(tiny_model, tokenizer("E", add_special_tokens=False)["input_ids"])
    records = score_batch(model, tokenizer, questions, max_new_tokens=2)
    assert [r["gold"] for r in records] == [None, "E"]
    assert [r["generate"]["prediction"] for r in records] == [None, None]  # "E" is never extracted
    assert not any(r["generate"]["correct"] or r["loglik"]["correct"] or r["loglik"]["correct_norm"]
                   for r in records[:1])
    assert not records[1]["generate"]["correct"]
    metrics = make_metrics("both")
    update_metrics(metrics, records)
    result = compute_metrics(metrics)
    assert result["count"] == 2 and result["generate/acc"] == 0.0 and result["generate/unparseable_rate"] == 1.0
