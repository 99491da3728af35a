"""InstructWorld: the small, fully specified world the instructjax recipe runs in.

Prompts and gold answers (prompts), the gold judgement (correctness), closed-domain
hallucination (hallucination), labelers (labelers), demonstrators (demonstrator), comparisons
(comparisons), the pretraining corpus (corpus), few-shot prompting (fewshot), held-out partition
(partition), splits (splits), JSONL (export);
the TFDS builder lives in instructjax.data.tfds_world. Everything is deterministic for a seed.

    cfg = WorldConfig(seed=0)
    demos = sft_demonstrations(cfg)            # [Demonstration(prompt, response)]
    comps = static_comparisons_for(cfg)        # [Comparison(prompt, responses, ranking, group)]
    evals = heldout_prompts(cfg)               # never in a training split
    c = correctness(text, finished, gold_answer(prompt))
    export_world(cfg, "out/world")             # out/world/<split>.jsonl
"""
from instructjax.world.comparisons import (
    Comparison, K_RANGE, SampleResponses, policy_comparisons, static_comparisons)
from instructjax.world.correctness import (
    content, correctness, exact_match, has_courtesy_prefix, levenshtein)
from instructjax.world.demonstrator import Demonstration, demonstrate, demonstrations
from instructjax.world.edits import random_edits
from instructjax.world.export import export_world, load_split, read_jsonl, write_jsonl
from instructjax.world.fewshot import cut_response, cut_token_ids, draw_exemplars, few_shot_prompt
from instructjax.world.hallucination import argument_tokens, hallucinates, made_up_tokens
from instructjax.world.labelers import (
    GROUP_SHARES, rank_responses, ranking_log_probability, ranking_probability, sample_group,
    sample_ranking, utility)
from instructjax.world.lexicon import ALPHABET, COURTESY_PREFIX, LEXICON
from instructjax.world.partition import is_heldout, sample_prompts
from instructjax.world.prompts import (
    FAMILIES, GROUPS, Instruction, condition_on_group, family_of, gold_answer, parse_prompt,
    sample_instruction, sample_prompt, split_group)
from instructjax.world.splits import (
    SPLITS, WorldConfig, build_split, fresh_heldout_prompts, heldout_prompts,
    policy_comparisons_for, ppo_prompts, pretrain_documents, pretrain_heldout_documents,
    rm_prompts, sft_demonstrations, sft_prompts, static_comparisons_for)
