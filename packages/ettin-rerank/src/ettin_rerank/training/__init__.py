"""Adapt a reranker to your data: ``train`` (Sentence Transformers' ``CrossEncoderTrainer``: the published
distillation recipe, or your labels; needs ``pip install "ettin-rerank[train]"``), ``calibration`` (raw logits ->
probability of relevance) and score fusion (``ettin_rerank.fusion``).
"""
