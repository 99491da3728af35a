"""Evaluation: held-out InstructWorld prompts (instructworld), reports (report), and
TruthfulQA-style multiple choice (truthfulqa); models are loaded from model dirs (handles).

    from instructjax import evaluation as ev
    base, sft = ev.load("runs/x/pretrain/model"), ev.load("runs/x/sft/model")
    specs = [ev.ModelSpec("base", base), ev.ModelSpec("base_fewshot", base, few_shot=True),
             ev.ModelSpec("sft", sft)]
    results = ev.evaluate_models(specs, prompts, reference=specs[2])
    ev.write_results(results, "out/eval")
"""
from instructjax.evaluation.handles import LoadedModel, load
from instructjax.evaluation.instructworld import (
    EvalSettings, ModelSpec, Responses, evaluate_models, few_shot_prompts, generate_responses,
    heldout_lm_loss, pairwise_wins, reward_scores, row_label, score_responses, sequence_kl,
    sequence_logprob, summarize)
from instructjax.evaluation.report import read_curves, results_table, write_results
from instructjax.evaluation.scoring import continuation_logprobs, last_token_scores
from instructjax.evaluation.truthfulqa import (MCItem, choice_loglikelihoods,
                                               evaluate_truthfulqa, load_items, mc1_score,
                                               mc2_score)

__all__ = [
    "LoadedModel", "load", "EvalSettings", "ModelSpec", "Responses", "evaluate_models",
    "few_shot_prompts", "generate_responses", "heldout_lm_loss", "pairwise_wins",
    "reward_scores", "row_label", "score_responses", "sequence_kl", "sequence_logprob",
    "summarize", "read_curves", "results_table", "write_results", "continuation_logprobs",
    "last_token_scores", "MCItem", "choice_loglikelihoods", "evaluate_truthfulqa", "load_items",
    "mc1_score", "mc2_score"]
