"""Pure, jit-able math of the InstructGPT recipe (losses, KL, GAE, sampling filters)."""
from instructjax.ops.logprobs import (entropy_from_logits, masked_count, masked_max,
                                      masked_mean, masked_sum, masked_var, masked_whiten,
                                      token_logprobs)
