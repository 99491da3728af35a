"""Attention kernels of the decoder: reference, blocked (pure JAX), TPU splash and cuDNN, one
mask rule for all (`mask.py`), chosen by `model.attention` (`dispatch.py`)."""
from instructjax.models.attention.blocked import blocked_attention
from instructjax.models.attention.cudnn import cudnn_attention
from instructjax.models.attention.dispatch import IMPLEMENTATIONS, attend, attend_cache, select
from instructjax.models.attention.mask import (SHARED_PREFIX_SEGMENT, AttentionMask,
                                               attention_mask)
from instructjax.models.attention.reference import reference_attention
from instructjax.models.attention.splash import splash_attention

__all__ = ["IMPLEMENTATIONS", "SHARED_PREFIX_SEGMENT", "AttentionMask", "attend", "attend_cache",
           "attention_mask", "blocked_attention", "cudnn_attention", "reference_attention",
           "select", "splash_attention"]
