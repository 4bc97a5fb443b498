"""Turn (query, document) pairs into model inputs: the query is tokenized once, documents in one batch call,
and each document is cut into the windows that the long-document strategy asks for."""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer


@dataclass(frozen=True)
class PairTemplate:
    """Where a tokenizer puts its special tokens around a pair: prefix + query + middle + document + suffix."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    query_type: int
    document_type: int

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


@dataclass(frozen=True)
class Window:
    """One model input: which pair it belongs to and which document tokens it reads."""

    pair: int
    token_start: int
    token_end: int
    input_ids: list[int]
    token_type_ids: list[int]


@dataclass(frozen=True)
class EncodedDocument:
    """A document's tokens and character offsets, without special tokens."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class PairTokenizer:
    """Thread-safe pair tokenization on a private copy of a fast tokenizer (the copy is never mutated)."""

    def __init__(self, hf_tokenizer) -> None:
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            msg = f"{type(hf_tokenizer).__name__} is not a fast (Rust) tokenizer; ettin-rerank needs one"
            raise TypeError(msg)
        self._tokenizer = Tokenizer.from_str(backend.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.template = self._probe_template()

    def _probe_template(self) -> PairTemplate:
        plain = self._tokenizer.encode_batch(["a", "b"], add_special_tokens=False)
        pair = self._tokenizer.encode("a", "b", add_special_tokens=True)
        ids, types = pair.ids, pair.type_ids
        first, second = plain[0].ids, plain[1].ids
        start = _find(ids, first, 0)
        middle_start = start + len(first)
        end = _find(ids, second, middle_start)
        suffix_start = end + len(second)
        return PairTemplate(
            prefix=ids[:start],
            middle=ids[middle_start:end],
            suffix=ids[suffix_start:],
            query_type=types[start],
            document_type=types[end],
        )

    def encode_query(self, query: str) -> list[int]:
        return self._tokenizer.encode(query, add_special_tokens=False).ids

    def encode_documents(self, documents: list[str]) -> list[EncodedDocument]:
        encodings: list[Encoding] = self._tokenizer.encode_batch(documents, add_special_tokens=False)
        return [EncodedDocument(ids=e.ids, offsets=e.offsets) for e in encodings]

    def build(self, pair: int, query_ids: list[int], document_ids: list[int], start: int, end: int) -> Window:
        """One model input made of the query and ``document_ids[start:end]``."""
        t = self.template
        head = t.prefix + query_ids + t.middle
        tail = document_ids[start:end] + t.suffix
        return Window(
            pair=pair,
            token_start=start,
            token_end=end,
            input_ids=head + tail,
            token_type_ids=[t.query_type] * len(head) + [t.document_type] * len(tail),
        )


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    msg = "could not locate the pair template of this tokenizer"
    raise ValueError(msg)
