"""Evaluation on BEIR-layout data: reading data sets (``beir``), the retrieve stage over Qdrant (``retrieval``),
the ``eval`` command (``run``) and memory measurement (``memory``). Needs the ``eval`` extra:
``pip install "ettin-rerank[eval]"``.
"""
