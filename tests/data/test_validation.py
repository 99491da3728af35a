"""Bad input: each kind raises a DataError naming file and line, or is counted under skip."""
import gzip
import json
import logging

import pytest

from instructjax.data import (DataError, load_records, make_comparison_iterator,
                              make_lm_iterator, make_prompt_iterator)
from instructjax.data.schemas import render_chat_prompt

GOOD_CMP = {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}


def test_exact_message_for_bad_ranking(write_jsonl):
  path = write_jsonl("comparisons.jsonl", [GOOD_CMP, {**GOOD_CMP, "ranking": [0, 0, 2]}])
  with pytest.raises(DataError) as e:
    load_records(path, "comparisons")
  assert str(e.value) == f"{path}:2: ranking [0, 0, 2] is not a permutation of 0..2"
  assert e.value.reason == "bad_ranking" and e.value.where == f"{path}:2"


@pytest.mark.parametrize("kind,bad,reason,fragment", [
    ("comparisons", "{not json", "malformed_json", "malformed JSON"),
    ("comparisons", "[1, 2]", "not_an_object", "expected a JSON object, got list"),
    ("comparisons", {"responses": ["a", "b"], "ranking": [0, 1]}, "missing_field",
     "missing field 'prompt'"),
    ("comparisons", {**GOOD_CMP, "responses": ["a", "", "c"]}, "empty_response",
     "response 1 is empty"),
    ("comparisons", {"prompt": "p", "responses": ["a"], "ranking": [0]}, "too_few_responses",
     "K >= 2"),
    ("comparisons", {**GOOD_CMP, "ranking": [0, 1]}, "bad_ranking", "not a permutation of 0..2"),
    ("comparisons", {**GOOD_CMP, "ranking": [0, 1, 3]}, "bad_ranking", "0..2"),
    ("comparisons", {"prompt": "p", "chosen": "a", "rejected": "  "}, "empty_response",
     "'rejected' is empty"),
    ("comparisons", {**GOOD_CMP, "ranking": "012"}, "bad_type", "list of ints"),
    ("demonstrations", {"prompt": "p"}, "missing_field", "missing field 'response'"),
    ("demonstrations", {"prompt": "p", "response": ""}, "empty_response", "'response' is empty"),
    ("demonstrations", {"prompt": 3, "response": "r"}, "bad_type", "must be a string"),
    ("demonstrations", {"messages": [{"role": "user", "content": "hi"}]}, "bad_dialogue",
     "role 'assistant'"),
    ("demonstrations", {"messages": [{"role": "assistant", "content": "hi"}]}, "empty_prompt",
     "at least one turn"),
    ("prompts", {"question": "q"}, "missing_field", "missing field 'prompt'"),
    ("prompts", {"messages": [{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "yo"}]}, "bad_dialogue",
     "must not have role 'assistant'"),
    ("prompts", {"messages": [{"role": "user", "content": " "}]}, "empty_prompt",
     "every message of the chat prompt is empty"),
    ("prompts", {"messages": "hi"}, "bad_type", "non-empty list"),
    ("prompts", {"messages": [{"role": "user"}]}, "bad_type", "message 0 must be"),
    ("texts", {"text": ""}, "empty_text", "'text' is empty"),
])
def test_each_bad_record_names_file_and_line(write_jsonl, kind, bad, reason, fragment):
  good = {"comparisons": GOOD_CMP, "demonstrations": {"prompt": "p", "response": "r"},
          "prompts": {"prompt": "p"}, "texts": {"text": "t"}}[kind]
  path = write_jsonl("data.jsonl", [good, "", good, bad, good])  # Bad record on line 4.
  with pytest.raises(DataError) as e:
    load_records(path, kind)
  assert str(e.value).startswith(f"{path}:4: "), str(e.value)
  assert fragment in str(e.value)
  assert e.value.reason == reason


def test_skip_counts_and_reports_every_bad_record(write_jsonl, caplog):
  rows = [GOOD_CMP, "{oops", {**GOOD_CMP, "ranking": [0, 0, 1]}, {"prompt": "p"},
          {"prompt": "p", "responses": ["a"], "ranking": [0]}, GOOD_CMP,
          {**GOOD_CMP, "ranking": [1, 1, 1]}]
  path = write_jsonl("c.jsonl", rows)
  with caplog.at_level(logging.INFO, logger="instructjax.data"):
    it = make_comparison_iterator(path, _tok(), batch_size=2, seq_len=16, seed=0,
                                  on_error="skip", shard_index=0, shard_count=1)
  report = it.report
  assert report.num_read == 7 and report.num_kept == 2
  assert dict(report.skipped) == {"malformed_json": 1, "bad_ranking": 2, "missing_field": 1,
                                  "too_few_responses": 1}
  assert f"{path}:3" in report.summary() and "bad_ranking" in report.summary()
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings and "skipped 5" in warnings[0].getMessage()


def test_raise_is_the_default(write_jsonl):
  path = write_jsonl("c.jsonl", [GOOD_CMP, "{oops"])
  with pytest.raises(DataError, match=r"c\.jsonl:2: malformed JSON"):
    make_comparison_iterator(path, _tok(), batch_size=2, seq_len=16, seed=0, shard_index=0,
                             shard_count=1)


def test_too_long_without_truncation(write_jsonl, tok):
  rows = [{"prompt": "short", "response": "ok"}, {"prompt": "p" * 10, "response": "r" * 30}]
  path = write_jsonl("sft.jsonl", rows)
  kw = dict(batch_size=1, seq_len=32, seed=0, pack=False, shard_index=0, shard_count=1)
  with pytest.raises(DataError, match=r"sft\.jsonl:2: prompt \+ response \+ EOS is 41 tokens, "
                     r"more than seq_len 32 \(truncation disabled\)"):
    make_lm_iterator(path, tok, truncate=False, **kw)
  with pytest.raises(DataError, match=r"sft\.jsonl:2: prompt is 10 tokens, more than "
                     r"max_prompt_len 8"):
    make_lm_iterator(path, tok, truncate=False, max_prompt_len=8, **kw)
  it = make_lm_iterator(path, tok, truncate=False, on_error="skip", **kw)
  assert dict(it.report.skipped) == {"too_long": 1} and it.report.num_kept == 1
  it = make_lm_iterator(path, tok, truncate=True, **kw)  # The policy applies instead.
  assert it.report.truncated_responses == 1 and not it.report.skipped


def test_tokenizer_rejection_names_the_record(tok):
  with pytest.raises(DataError, match=r"records\[1\]: cannot tokenize the response"):
    make_lm_iterator([{"prompt": "a", "response": "b"}, {"prompt": "a", "response": "b;"}],
                     tok, batch_size=1, seq_len=16, seed=0, pack=False, shard_index=0,
                     shard_count=1)


def test_too_many_responses_for_k_max(tok):
  recs = [GOOD_CMP, {"prompt": "p", "chosen": "a", "rejected": "b"}]
  with pytest.raises(DataError, match=r"records\[0\]: K = 3 responses, more than "
                     r"max_responses 2"):
    make_comparison_iterator(recs, tok, batch_size=1, seq_len=16, seed=0, max_responses=2,
                             shard_index=0, shard_count=1)


def test_nothing_valid_left_is_an_error(tok):
  with pytest.raises(ValueError, match="no valid"):
    make_lm_iterator([{"prompt": "a"}], tok, batch_size=1, seq_len=16, seed=0, pack=False,
                     on_error="skip", shard_index=0, shard_count=1)


def test_sources_in_memory_gzip_and_blank_lines(tmp_path):
  path = tmp_path / "t.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write(json.dumps({"text": "a"}) + "\n\n" + json.dumps({"text": ""}) + "\n")
  with pytest.raises(DataError, match=r"t\.jsonl\.gz:3: field 'text' is empty"):
    load_records(str(path), "texts")
  recs, report = load_records([{"text": "x"}, {"text": "y"}], "texts")
  assert [r.where for r in recs] == ["records[0]", "records[1]"] and report.num_kept == 2
  # Already parsed records pass through.
  again, _ = load_records(recs, "texts")
  assert again == recs


def test_chat_demonstrations(write_jsonl):
  chat = {"messages": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Sky colour?"},
                       {"role": "assistant", "content": "Blue."}]}
  demos, _ = load_records(write_jsonl("chat.jsonl", [chat]), "demonstrations")
  assert demos[0].prompt == "System: Be brief.\nUser: Sky colour?\nAssistant: "
  assert demos[0].response == "Blue."
  assert demos[0].prompt == render_chat_prompt(chat["messages"][:-1])


class _TemplateTokenizer:
  """A char tokenizer with a chat template, to check the template is used for chat prompts."""

  def __init__(self):
    from instructjax.tokenizer import CharTokenizer
    self._t = CharTokenizer()
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.calls = []

  def encode(self, text, add_bos=False):
    return self._t.encode(text, add_bos)

  def decode(self, ids, skip_special=True):
    return self._t.decode(ids, skip_special)

  def apply_chat_template(self, messages, add_generation_prompt=False):
    self.calls.append((messages, add_generation_prompt))
    return "".join(f"({m['role']}){m['content']}" for m in messages) + "(assistant)"


def test_chat_template_used_when_the_tokenizer_has_one():
  t = _TemplateTokenizer()
  chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
  it = make_lm_iterator([chat], t, batch_size=1, seq_len=32, seed=0, pack=False,
                        shard_index=0, shard_count=1)
  batch = next(it)
  assert t.decode(batch["tokens"][0]) == "(user)hi(assistant)yo"
  assert t.calls == [([{"role": "user", "content": "hi"}], True)]
  # Loss only on "yo" + EOS.
  assert t.decode(batch["targets"][0][batch["loss_mask"][0]], skip_special=False) == "yo<eos>"


CHAT_PROMPT = {"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Sky colour?"}], "gold": "blue"}


def test_chat_prompts_keep_their_turns_and_metadata(write_jsonl):
  [rec], _ = load_records(write_jsonl("prompts.jsonl", [CHAT_PROMPT]), "prompts")
  assert rec.messages == tuple(CHAT_PROMPT["messages"])
  assert rec.prompt == "System: Be brief.\nUser: Sky colour?\nAssistant: "
  assert rec.metadata == {"gold": "blue"}


def _prompt_text(records, tokenizer, **kw):
  it = make_prompt_iterator(records, tokenizer, batch_size=1, prompt_len=60, seed=0,
                            shard_index=0, shard_count=1, **kw)
  batch = next(it)
  return tokenizer.decode(batch["tokens"][0][batch["segment_ids"][0] > 0], skip_special=False)


def test_chat_prompts_go_through_the_template_or_the_plain_rendering():
  t = _TemplateTokenizer()
  assert _prompt_text([CHAT_PROMPT], t) == "(system)Be brief.(user)Sky colour?(assistant)"
  assert t.calls == [(CHAT_PROMPT["messages"], True)]
  assert _prompt_text([CHAT_PROMPT], _tok()) == ("System: Be brief.\nUser: Sky colour?\n"
                                                 "Assistant: ")  # No template: plain.
  assert _prompt_text([{"prompt": "Sky?"}], _tok(), add_bos=True) == "<bos>Sky?"


class _BosTemplateTokenizer(_TemplateTokenizer):
  """A template that writes BOS itself (as Llama 3's does), returning token ids."""

  def apply_chat_template(self, messages, add_generation_prompt=False):
    return [self.bos_id] + self.encode(super().apply_chat_template(messages,
                                                                   add_generation_prompt))


def test_add_bos_gives_one_bos_whether_or_not_the_template_writes_it():
  for t in (_TemplateTokenizer(), _BosTemplateTokenizer()):
    text = _prompt_text([CHAT_PROMPT], t, add_bos=True)
    assert text == "<bos>(system)Be brief.(user)Sky colour?(assistant)", type(t).__name__
    demo = {"messages": CHAT_PROMPT["messages"] + [{"role": "assistant", "content": "Blue."}]}
    batch = next(make_lm_iterator([demo], t, batch_size=1, seq_len=64, seed=0, pack=False,
                                  add_bos=True, shard_index=0, shard_count=1))
    row = batch["tokens"][0][batch["segment_ids"][0] > 0]
    assert t.decode(row, skip_special=False).startswith("<bos>(system)")
    assert list(row).count(t.bos_id) == 1
  # Cut from the left, the BOS stays in front.
  text = _prompt_text([CHAT_PROMPT], _BosTemplateTokenizer(), add_bos=True, truncate=True)
  short = make_prompt_iterator([CHAT_PROMPT], _BosTemplateTokenizer(), batch_size=1,
                               prompt_len=12, seed=0, add_bos=True, shard_index=0, shard_count=1)
  b = next(short)
  assert b["tokens"][0][0] == 1 and text.endswith("(assistant)")
  assert _BosTemplateTokenizer().decode(b["tokens"][0]) == text[-11:]


def _tok():
  from instructjax.tokenizer import CharTokenizer
  return CharTokenizer()
