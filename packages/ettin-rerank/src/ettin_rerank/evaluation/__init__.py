"""Evaluation on BEIR-layout data and the demo: reading data sets (``beir``), the retrieve stage over Qdrant
(``retrieval``), metrics and significance (``metrics``, the only ``ir_measures`` importer), fusion tuning
(``fusion``), the ``eval`` command's library (``compare``), the retrieve-then-rerank demo (``demo``) and memory
measurement (``memory``). Needs the ``eval`` extra: ``pip install "ettin-rerank[eval]"``.

Rule: an application of the engine; it depends on the model (``engine``) and on plain runs, never on a command
line (the CLI calls its typed functions).
"""
