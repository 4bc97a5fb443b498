"""Adapt a reranker to your data: ``train`` (Sentence Transformers' ``CrossEncoderTrainer``: the published
distillation recipe, or your labels; needs ``pip install "ettin-rerank[train]"``) and ``calibration`` (raw logits
-> probability of relevance); fusion weights are tuned by ``ettin_rerank.evaluation.fusion``.

Rule: an application on top of the engine and the evaluation harness (before/after measurements use
``evaluation.metrics`` and ``evaluation.compare``); nothing below imports it.
"""
