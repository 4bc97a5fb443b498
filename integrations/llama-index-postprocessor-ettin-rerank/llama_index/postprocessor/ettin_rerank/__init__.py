from llama_index.postprocessor.ettin_rerank.base import EttinRerank

__all__ = ["EttinRerank"]
