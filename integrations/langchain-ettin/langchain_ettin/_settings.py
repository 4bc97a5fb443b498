"""The settings both LangChain classes share: which model, how to run it, what to do with each document."""

from __future__ import annotations

from ettin_rerank.adapters import (
    ADAPTER_MAX_TOKENS_PER_DOC,
    API_KEY_ENV,
    Activation,
    Backend,
    BackendUser,
    EngineArgs,
    RemoteSpec,
    Strategy,
)
from langchain_core.utils import secret_from_env
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator


class EttinSettings(BackendUser, BaseModel):
    """Fields and model handling of :class:`~langchain_ettin.EttinRerank` and
    :class:`~langchain_ettin.EttinCrossEncoder`; every field is checked at construction."""

    model: str = "17m"
    """Ettin size (``17m`` ... ``1b``), local folder or hub id; with ``base_url``, the served model that scores (its
    served name, or as given to ``serve --model``)."""
    activation: Activation = "sigmoid"
    """``"sigmoid"`` for relevance in [0, 1], ``"none"`` for raw logits, ``"calibrated"`` for the fitted map."""
    device: str | None = None
    """``"cpu"``, ``"cuda"``, ``"mps"``...; ``None`` picks CUDA, then MPS, then the CPU."""
    dtype: str | None = None
    """``"float32"``, ``"bfloat16"`` or ``"float16"``; ``None`` is automatic."""
    max_length: int | None = None
    """Tokens per window; ``None`` uses the model's limit (7,999 for Ettin)."""
    long_document_strategy: Strategy = "max"
    """What to do past the window: the best window's score, the mean of the windows, or the head only."""
    window_overlap: int | None = Field(default=None, ge=0)
    """Tokens shared by consecutive windows of a long document (``None``: 128)."""
    max_tokens_per_doc: int | None = ADAPTER_MAX_TOKENS_PER_DOC
    """Read at most this many tokens of each document (``None``: all of it)."""
    batch_tokens: int | None = None
    """Token budget of one forward pass."""
    attention: str | None = None
    """``"sdpa"``, ``"flash_attn"`` or ``"varlen"``; ``None`` picks the fastest available."""
    runtime: str | None = None
    """``"torch"`` or ``"openvino"`` (CPU, ``pip install "ettin-rerank[openvino]"``); ``None`` picks the one measured
    fastest on this CPU kind."""
    precision: str | None = None
    """``"int8"`` to quantize the linear layers (OpenVINO + NNCF; faster, not exact); ``None``: ``dtype`` decides."""
    threads: int | None = None
    """CPU threads of a forward pass; ``None``: the CPUs this process may use, fewer while neighbours keep some busy."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model."""
    token: SecretStr | None = None
    """Hugging Face token for private models."""
    cache_folder: str | None = None
    """Hugging Face cache folder."""
    local_files_only: bool = False
    """Never contact the Hugging Face hub."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the checkpoint."""
    base_url: str | None = None
    """An ettin-rerank server (``ettin-rerank serve``) to send the work to instead of loading the model here."""
    api_key: SecretStr | None = Field(default_factory=secret_from_env(API_KEY_ENV, default=None))
    """The server's API key, if it needs one (default: the ``ETTIN_API_KEY`` environment variable)."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds to wait for the server."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    _backend: Backend | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_arguments(self) -> EttinSettings:
        """Every argument is checked at construction, before any model is loaded."""
        self._engine_spec()
        self._call_options()
        return self

    def _engine_spec(self) -> EngineArgs | RemoteSpec:
        if self.base_url is not None:
            api_key = self.api_key.get_secret_value() if self.api_key else None
            return RemoteSpec(self.base_url, model=self.model, api_key=api_key, timeout=self.timeout)
        return EngineArgs(
            model=self.model, device=self.device, dtype=self.dtype, revision=self.revision,
            token=self.token.get_secret_value() if self.token else None, cache_folder=self.cache_folder,
            local_files_only=self.local_files_only, attention=self.attention, batch_tokens=self.batch_tokens,
            trust_remote_code=self.trust_remote_code, runtime=self.runtime, precision=self.precision,
            threads=self.threads,
        )
