# SPDX-License-Identifier: Apache-2.0
from haystack_integrations.components.rankers.ettin.ranker import EttinRanker

__all__ = ["EttinRanker"]
