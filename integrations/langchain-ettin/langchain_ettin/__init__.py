"""LangChain integration for the Ettin rerankers."""

from langchain_ettin.cross_encoder import EttinCrossEncoder
from langchain_ettin.rerank import EttinRerank

__all__ = ["EttinCrossEncoder", "EttinRerank"]
