"""Public layouts (Anthropic HH, TL;DR comparisons, Alpaca) written to files and adapted."""
import pytest

from instructjax.data import DataError, load_records
from instructjax.data.adapters import ALPACA_PROMPT_NO_INPUT, ALPACA_PROMPT_WITH_INPUT

HH = [
    {"chosen": "\n\nHuman: What is 2 plus 2?\n\nAssistant: 4.",
     "rejected": "\n\nHuman: What is 2 plus 2?\n\nAssistant: 5, I think."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Goodbye.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: No."},
]

TLDR = [
    {"info": {"id": "t3_abc", "post": "My cat ate my homework.", "title": "Cat problem",
              "subreddit": "pets"},
     "summaries": [{"text": " cat ate homework", "policy": "sup1"},
                   {"text": " I have a cat", "policy": "ref"}],
     "choice": 1, "worker": "w1", "batch": "b1", "split": "train"},
    {"info": {"id": "t3_abc", "post": "My cat ate my homework.", "title": "Cat problem",
              "subreddit": "pets"},
     "summaries": [{"text": " homework gone"}, {"text": " cat hungry"}], "choice": 0},
    {"info": {"id": "cnn1", "article": "Rain fell.", "title": None, "subreddit": None},
     "summaries": [{"text": " rain"}, {"text": " sun"}], "choice": 0},
]

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue"},
]


def test_anthropic_hh(write_jsonl):
  cmps, report = load_records(write_jsonl("hh.jsonl", HH), "comparisons", adapter="hh")
  assert report.num_kept == 2
  assert cmps[0].prompt == "\n\nHuman: What is 2 plus 2?\n\nAssistant:"
  assert cmps[0].responses == (" 4.", " 5, I think.") and cmps[0].ranking == (0, 1)
  # Multi-turn: the prompt is everything up to the last assistant turn.
  assert cmps[1].prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant:"
  for raw, cmp in zip(HH, cmps):  # Nothing lost: prompt + response is each dialogue.
    assert cmp.prompt + cmp.ranked_responses[0] == raw["chosen"]
    assert cmp.prompt + cmp.ranked_responses[1] == raw["rejected"]


def test_anthropic_hh_errors(write_jsonl):
  bad = [HH[0], {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"},
         {"chosen": "no turns here", "rejected": "\n\nHuman: B\n\nAssistant: y"},
         {"chosen": "\n\nHuman: A\n\nAssistant:", "rejected": "\n\nHuman: A\n\nAssistant: y"},
         {"rejected": "x"}]
  path = write_jsonl("hh.jsonl", bad)
  cmps, report = load_records(path, "comparisons", adapter="hh", on_error="skip")
  assert len(cmps) == 1
  assert dict(report.skipped) == {"bad_dialogue": 2, "empty_response": 1, "missing_field": 1}
  with pytest.raises(DataError, match=rf"{path}:2: chosen and rejected dialogues differ"):
    load_records(path, "comparisons", adapter="hh")


def test_tldr_comparisons(write_jsonl):
  cmps, _ = load_records(write_jsonl("tldr.jsonl", TLDR), "comparisons", adapter="tldr")
  assert cmps[0].prompt == ("SUBREDDIT: r/pets\nTITLE: Cat problem\nPOST: My cat ate my "
                            "homework.\nTL;DR:")
  assert cmps[0].responses == (" cat ate homework", " I have a cat")
  assert cmps[0].ranking == (1, 0)  # choice 1: the second summary is preferred.
  assert cmps[0].ranked_responses[0] == " I have a cat"
  assert cmps[1].ranking == (0, 1)
  assert cmps[0].group == cmps[1].group == "t3_abc"
  assert cmps[2].prompt == "ARTICLE: Rain fell.\nTL;DR:"


def test_tldr_errors(write_jsonl):
  bad = [{**TLDR[0], "choice": 2}, {**TLDR[0], "summaries": [{"text": "x"}]},
         {"summaries": TLDR[0]["summaries"], "choice": 0}]
  _, report = load_records(write_jsonl("t.jsonl", bad), "comparisons", adapter="tldr",
                           on_error="skip")
  assert dict(report.skipped) == {"bad_ranking": 1, "missing_field": 2}


def test_alpaca(write_jsonl):
  demos, _ = load_records(write_jsonl("alpaca.jsonl", ALPACA), "demonstrations",
                          adapter="alpaca")
  assert demos[0].prompt == ALPACA_PROMPT_WITH_INPUT.format(instruction="Add the numbers.",
                                                            input="2, 3")
  assert demos[0].prompt.endswith("### Input:\n2, 3\n\n### Response:\n")
  assert demos[1].prompt == ALPACA_PROMPT_NO_INPUT.format(instruction="Name a colour.")
  assert "### Input" not in demos[1].prompt
  assert [d.response for d in demos] == ["5", "Blue"]
  with pytest.raises(DataError, match=r"a\.jsonl:1: missing field 'output'"):
    load_records(write_jsonl("a.jsonl", [{"instruction": "x"}]), "demonstrations",
                 adapter="alpaca")


def test_adapter_kind_is_checked():
  with pytest.raises(ValueError, match="produces comparisons"):
    load_records([], "demonstrations", adapter="hh")
  with pytest.raises(ValueError, match="unknown adapter"):
    load_records([], "comparisons", adapter="nope")
