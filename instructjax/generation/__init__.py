"""Sampling from a DecoderLM: the jitted KV-cache sampler and a text-level `generate_texts`."""
from instructjax.generation.config import SampleOutput, SamplingConfig
from instructjax.generation.sampler import make_prefill_and_decode, make_sampler
from instructjax.generation.texts import PROMPT_BUCKET, bucket_length, generate_texts, left_pad

__all__ = ["SampleOutput", "SamplingConfig", "make_prefill_and_decode", "make_sampler",
           "generate_texts", "PROMPT_BUCKET", "bucket_length", "left_pad"]
