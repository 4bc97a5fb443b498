"""EttinRanker: a Haystack ranker component backed by the ettin-rerank engine."""

from __future__ import annotations

import copy
from dataclasses import replace
from math import inf
from typing import Any, Literal

from ettin_rerank.adapters import (
    ADAPTER_MAX_TOKENS_PER_DOC,
    API_KEY_ENV,
    Backend,
    EngineArgs,
    Fusion,
    RemoteSpec,
    RerankOptions,
    RerankResult,
    adapter_options,
    check_fusion_weight,
    check_list_of,
    check_query,
    check_top_k,
    open_async,
    open_backend,
)
from haystack import Document, component, default_from_dict, default_to_dict
from haystack.utils import ComponentDevice, Secret, deserialize_secrets_inplace
from haystack.utils.hf import deserialize_hf_model_kwargs, serialize_hf_model_kwargs

_PLAIN_INIT_PARAMETERS = (
    "model", "top_k", "query_prefix", "query_suffix", "document_prefix", "document_suffix", "meta_fields_to_embed",
    "embedding_separator", "scale_score", "calibration_factor", "score_threshold", "trust_remote_code",
    "tokenizer_kwargs", "config_kwargs", "backend", "batch_size", "dtype", "max_length", "long_document_strategy",
    "window_overlap", "max_tokens_per_doc", "batch_tokens", "attention", "revision", "cache_folder", "url", "timeout",
    "calibrated", "fusion_weight", "precision", "threads",
)
_ATTENTION_FROM_TRANSFORMERS = {"flash_attention_2": "flash_attn", "sdpa": "sdpa", "eager": "sdpa"}


@component
class EttinRanker:
    """
    Ranks documents by relevance to a query with an Ettin cross-encoder (or any Sentence Transformers CrossEncoder).

    A drop-in for `SentenceTransformersSimilarityRanker`: same arguments (a pipeline YAML works with only the
    `type` changed), same behaviour (documents deduplicated by id, keeping the best-scored copy; scores in [0, 1]
    with `scale_score=True`), plus `calibration_factor` as in `TransformersSimilarityRanker`.
    Documents are read whole up to the model's 8K-token window; longer ones follow `long_document_strategy`, and
    each returned document's `meta` says what was read: `ettin_num_tokens`, `ettin_num_windows`, `ettin_truncated`,
    `ettin_passage_start` / `ettin_passage_end` (character span of the best window in `content`) and
    `ettin_logit` (the raw score, which decides the order).

    ### Usage example

    ```python
    from haystack import Document
    from haystack_integrations.components.rankers.ettin import EttinRanker

    ranker = EttinRanker(model="17m", top_k=2)
    result = ranker.run(query="What is Ettin?", documents=[Document(content="..."), Document(content="...")])
    ```
    """

    def __init__(
        self,
        *,
        model: str = "17m",
        device: ComponentDevice | None = None,
        token: Secret | None = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False),  # noqa: B008
        top_k: int = 10,
        query_prefix: str = "",
        query_suffix: str = "",
        document_prefix: str = "",
        document_suffix: str = "",
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        scale_score: bool = True,
        calibration_factor: float = 1.0,
        score_threshold: float | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: Literal["torch", "openvino"] | None = None,
        batch_size: int | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        long_document_strategy: str = "max",
        window_overlap: int | None = None,
        max_tokens_per_doc: int | None = ADAPTER_MAX_TOKENS_PER_DOC,
        batch_tokens: int | None = None,
        attention: str | None = None,
        revision: str | None = None,
        cache_folder: str | None = None,
        url: str | None = None,
        api_key: Secret | None = Secret.from_env_var(API_KEY_ENV, strict=False),  # noqa: B008
        timeout: float = 60.0,
        calibrated: bool = False,
        fusion_weight: float | None = None,
        precision: Literal["int8"] | None = None,
        threads: int | None = None,
    ) -> None:
        """
        Creates an EttinRanker; every argument is checked now, nothing is loaded until `warm_up()` or `run()`.

        :param model: Ettin size (`17m` ... `1b`), local folder or Hugging Face hub id; with `url`, the served model
            that scores (its served name, or as given to `serve --model`).
        :param device: The device to run on; `None` picks CUDA, then Apple MPS, then the CPU.
        :param token: Hugging Face token for private models.
        :param top_k: Maximum number of documents to return.
        :param query_prefix: Text put before the query.
        :param query_suffix: Text put after the query.
        :param document_prefix: Text put before each document.
        :param document_suffix: Text put after each document.
        :param meta_fields_to_embed: Metadata fields read together with the document content.
        :param embedding_separator: Separator between the metadata fields and the content.
        :param scale_score: Return `sigmoid(calibration_factor * logit)` in [0, 1] instead of raw logits. The order
            is the same either way (it follows the raw logit).
        :param calibration_factor: Multiplies the logit before the sigmoid.
        :param score_threshold: Drop documents scoring below this (in the space of the returned scores).
        :param trust_remote_code: Allow custom modelling code from the checkpoint.
        :param model_kwargs: As for Sentence Transformers; `dtype` (or `torch_dtype`) and `attn_implementation`
            are understood, anything else is an error.
        :param tokenizer_kwargs: As for Sentence Transformers; `model_max_length` is understood (as `max_length`).
        :param config_kwargs: Not supported (must be empty): the engine reads the checkpoint's own configuration.
        :param backend: What runs the model: `torch`, or `openvino` on a CPU (`pip install "ettin-rerank[openvino]"`;
            converted once, cached on disk). `None` picks the runtime measured fastest on this CPU kind. (A YAML
            written for `SentenceTransformersSimilarityRanker` says `torch`: that runs PyTorch.)
        :param batch_size: At most this many documents (windows) in one forward pass; the engine batches by a token
            budget (`batch_tokens`) anyway, so `None` is usually best.
        :param dtype: `float32`, `bfloat16` or `float16`; `None` picks the fastest exact-enough one for the device.
        :param max_length: Tokens per window; `None` uses the model's limit.
        :param long_document_strategy: `max`, `mean` or `truncate` for documents longer than the window.
        :param window_overlap: Tokens shared by consecutive windows of a long document (`None`: 128).
        :param max_tokens_per_doc: Read at most this many tokens of each document (`None`: all of it).
        :param batch_tokens: Token budget of one forward pass.
        :param attention: `sdpa`, `flash_attn` or `varlen`; `None` picks the fastest available.
        :param revision: Hub revision (branch, tag or commit) of the model.
        :param cache_folder: Hugging Face cache folder (default: the usual one).
        :param url: An ettin-rerank server (`ettin-rerank serve`) to send the work to instead of loading the model
            in this process; the results are the same.
        :param api_key: The server's API key (default: the `ETTIN_API_KEY` environment variable, if set).
        :param timeout: Seconds to wait for the server.
        :param calibrated: With `scale_score`, report the model's calibrated probability of relevance
            (`ettin-rerank calibrate`) instead of the plain sigmoid.
        :param fusion_weight: Rank by `fusion_weight * retrieval score + (1 - fusion_weight) * reranker score`
            (each min-max normalised; the incoming `Document.score` is the retrieval score; tune it with
            `ettin-rerank eval --fusion`). `None`: the reranker alone.
        :param precision: `int8` to quantize the linear layers (OpenVINO + NNCF; faster, not exact); `None`: `dtype`
            decides.
        :param threads: CPU threads of a forward pass; `None`: the CPUs this process may use (affinity, cgroup
            quota), fewer while other processes keep some busy.
        :raises ValueError: If an argument is out of range (`top_k` not > 0, an unknown strategy...).
        """
        check_top_k(top_k)
        self.model = model
        self.device = device
        self.token = token
        self.top_k = top_k
        self.query_prefix = query_prefix
        self.query_suffix = query_suffix
        self.document_prefix = document_prefix
        self.document_suffix = document_suffix
        self.meta_fields_to_embed = meta_fields_to_embed or []
        self.embedding_separator = embedding_separator
        self.scale_score = scale_score
        self.calibration_factor = calibration_factor
        self.score_threshold = score_threshold
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = model_kwargs
        self.tokenizer_kwargs = tokenizer_kwargs
        self.config_kwargs = config_kwargs
        self.backend = backend
        self.batch_size = batch_size
        self.dtype = dtype
        self.max_length = max_length
        self.long_document_strategy = long_document_strategy
        self.window_overlap = window_overlap
        self.max_tokens_per_doc = max_tokens_per_doc
        self.batch_tokens = batch_tokens
        self.attention = attention
        self.revision = revision
        self.cache_folder = cache_folder
        self.url = url
        self.api_key = api_key
        self.timeout = timeout
        self.calibrated = calibrated
        self.fusion_weight = check_fusion_weight(fusion_weight)
        self.precision = precision
        self.threads = threads
        self._spec = self._engine_spec()
        self._options = self._call_options(scale_score, calibration_factor)
        self._backend: Backend | None = None

    def _engine_spec(self) -> EngineArgs | RemoteSpec:
        if self.url is not None:
            api_key = self.api_key.resolve_value() if self.api_key else None
            return RemoteSpec(self.url, model=self.model, api_key=api_key, timeout=self.timeout)
        if self.backend not in (None, "torch", "openvino"):
            msg = ("backend must be 'torch' or 'openvino' (or None: the runtime measured fastest on this CPU), "
                   f"but got {self.backend!r}")
            raise ValueError(msg)
        if self.config_kwargs:
            msg = ("config_kwargs is not supported (the engine reads the checkpoint's own configuration), "
                   f"got {self.config_kwargs}")
            raise ValueError(msg)
        model_kwargs = dict(self.model_kwargs or {})
        dtype = model_kwargs.pop("dtype", model_kwargs.pop("torch_dtype", None))
        attention = model_kwargs.pop("attn_implementation", None)
        if model_kwargs:
            msg = ("model_kwargs: only dtype (torch_dtype) and attn_implementation are understood, "
                   f"got {sorted(model_kwargs)}")
            raise ValueError(msg)
        if attention is not None and attention not in _ATTENTION_FROM_TRANSFORMERS:
            msg = f"model_kwargs['attn_implementation'] must be one of {', '.join(_ATTENTION_FROM_TRANSFORMERS)}"
            raise ValueError(msg)
        return EngineArgs(
            model=self.model,
            device=ComponentDevice.resolve_device(self.device).to_torch_str() if self.device else None,
            dtype=self.dtype or (str(dtype) if dtype is not None else None),
            revision=self.revision,
            token=self.token.resolve_value() if self.token else None,
            cache_folder=self.cache_folder,
            attention=self.attention or _ATTENTION_FROM_TRANSFORMERS.get(attention),
            batch_tokens=self.batch_tokens,
            batch_size=self.batch_size,
            trust_remote_code=self.trust_remote_code,
            runtime=self.backend,
            precision=self.precision,
            threads=self.threads,
        )

    def _call_options(self, scale_score: bool, calibration_factor: float) -> RerankOptions:
        tokenizer_kwargs = dict(self.tokenizer_kwargs or {})
        max_length = tokenizer_kwargs.pop("model_max_length", None)
        if tokenizer_kwargs:
            msg = f"tokenizer_kwargs: only model_max_length is understood, got {sorted(tokenizer_kwargs)}"
            raise ValueError(msg)
        return adapter_options(
            max_length=self.max_length or max_length, long_document_strategy=self.long_document_strategy,
            window_overlap=self.window_overlap, max_tokens_per_doc=self.max_tokens_per_doc,
            activation=("calibrated" if self.calibrated else "sigmoid") if scale_score else "none",
            calibration_factor=calibration_factor,
        )

    def warm_up(self) -> None:
        """Loads the model (once; every component on the same checkpoint, device and dtype shares it)."""
        if self._backend is None:
            self._backend = open_backend(self._spec)

    async def warm_up_async(self) -> None:
        """Loads the model on a worker thread, so `Pipeline.run_async` never blocks its event loop."""
        if self._backend is None:
            self._backend = await open_async(self._spec)

    def close(self) -> None:
        """Gives the shared model back; the last component using it frees its memory. `run` loads it again."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def to_dict(self) -> dict[str, Any]:
        """
        Serializes the component to a dictionary.

        :returns: Dictionary with serialized data.
        """
        plain = {name: getattr(self, name) for name in _PLAIN_INIT_PARAMETERS}
        data = default_to_dict(
            self,
            device=self.device.to_dict() if self.device else None,
            token=self.token.to_dict() if self.token else None,
            api_key=self.api_key.to_dict() if self.api_key else None,
            model_kwargs=copy.deepcopy(self.model_kwargs),
            **plain,
        )
        if data["init_parameters"].get("model_kwargs") is not None:
            serialize_hf_model_kwargs(data["init_parameters"]["model_kwargs"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EttinRanker:
        """
        Deserializes the component from a dictionary.

        :param data: Dictionary to deserialize from.
        :returns: Deserialized component.
        """
        init_params = copy.deepcopy(data.get("init_parameters", {}))  # leave the caller's dictionary as it was
        data = {**data, "init_parameters": init_params}
        if init_params.get("device") is not None:
            init_params["device"] = ComponentDevice.from_dict(init_params["device"])
        if init_params.get("model_kwargs") is not None:
            deserialize_hf_model_kwargs(init_params["model_kwargs"])
        deserialize_secrets_inplace(init_params, keys=["token", "api_key"])
        return default_from_dict(cls, data)

    def _prepare(self, query: Any, documents: Any, top_k: int | None, scale_score: bool | None,
                 score_threshold: float | None) -> tuple[str, list[Document], list[str], dict[str, Any]]:
        """Texts and engine arguments for one call; overrides are checked with `is not None` (0 and False count)."""
        check_query(query)
        unique = _deduplicate(check_list_of(documents, Document, "documents", "Documents", "a Document"))
        texts = [self.document_prefix + self.embedding_separator.join(
            [*(str(doc.meta[f]) for f in self.meta_fields_to_embed if doc.meta.get(f) is not None), doc.content or ""]
        ) + self.document_suffix for doc in unique]
        options = self._options
        if scale_score is not None and scale_score != self.scale_score:
            options = self._call_options(scale_score, self.calibration_factor)
        arguments = {
            "top_k": check_top_k(top_k if top_k is not None else self.top_k),
            "score_threshold": score_threshold if score_threshold is not None else self.score_threshold,
            "options": options,
            "fusion": Fusion.of(self.fusion_weight, [doc.score for doc in unique]),
        }
        return self.query_prefix + query + self.query_suffix, unique, texts, arguments

    @staticmethod
    def _scored(documents: list[Document], results: list[RerankResult]) -> dict[str, list[Document]]:
        """Copies of the ranked documents (own `meta`, never shared with the inputs) with `score` set."""
        return {"documents": [
            replace(documents[r.index], score=r.score, meta={**copy.deepcopy(documents[r.index].meta), **r.metadata()})
            for r in results
        ]}

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """
        Returns the documents ranked by relevance to the query, best first.

        Documents are deduplicated by id first, keeping the copy with the highest incoming score.

        :param query: The query.
        :param documents: Documents to rank.
        :param top_k: Maximum number of documents to return (overrides the init value).
        :param scale_score: Sigmoid-scale the scores (overrides the init value; `False` is honoured).
        :param score_threshold: Minimum score to keep (overrides the init value; `0.0` is honoured).
        :returns: A dictionary with `documents`: copies of the input documents with `score` and the `ettin_*` meta.
        :raises ValueError: If `top_k` is not > 0 or the query is empty.
        :raises TypeError: If `query` is not a string or `documents` not a list of Documents.
        """
        query, unique, texts, arguments = self._prepare(query, documents, top_k, scale_score, score_threshold)
        if not unique:
            return {"documents": []}
        self.warm_up()
        return self._scored(unique, self._backend.rerank(query, texts, **arguments))

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Ranks the documents without blocking the event loop (cold or warm); same parameters and result as `run`."""
        query, unique, texts, arguments = self._prepare(query, documents, top_k, scale_score, score_threshold)
        if not unique:
            return {"documents": []}
        await self.warm_up_async()
        return self._scored(unique, await self._backend.arerank(query, texts, **arguments))


def _deduplicate(documents: list[Document]) -> list[Document]:
    """One document per id, the copy with the highest incoming score (as every Haystack ranker does)."""
    best: dict[str, Document] = {}
    for document in documents:
        kept = best.get(document.id)
        score = document.score if document.score is not None else -inf
        if kept is None or score > (kept.score if kept.score is not None else -inf):
            best[document.id] = document
    return list(best.values())

