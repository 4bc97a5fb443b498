"""OpenVINO as the CPU runtime of the encoder (``runtime="openvino"``, ``pip install "ettin-rerank[openvino]"``).

The checkpoint's encoder and pooling (:class:`~ettin_rerank.engine.export.PaddedEncoder`) are converted once to
OpenVINO's format and kept on disk (``$ETTIN_RERANK_CACHE``, else ``~/.cache/ettin-rerank/openvino``), keyed by
the checkpoint's weights and the versions involved; later loads read the converted model. An entry is written beside
and renamed when complete, with the size and CRC-32 of each file (``entry.json``); an entry that does not match them,
or that OpenVINO cannot read, is logged and converted again. Batches are the engine's length-sorted token-budget
batches, padded to the longest window of each (rounded up to 8 tokens); the head runs in PyTorch in float32, as on the
torch runtime. Where this CPU kind's measurements say so (``streams`` > 1: AVX2), batches run ``streams`` at a time
(the token budget shared between them), each on an OpenVINO stream of a share of the threads: small matrices
parallelise poorly across threads. A call of few batches, a batch over its share (a long document's window) and
every batch under contention run one at a time on all the free threads. Windows, long-document strategies, results
and errors are the engine's own: only the forward pass changes.

Precision: ``dtype`` becomes OpenVINO's inference precision (``float32`` -> f32, ``bfloat16`` -> bf16, which the CPU
plugin runs on AMX / AVX-512 BF16). ``precision="int8"`` quantizes the converted float32 model (its own cache entry,
converted first if missing) with NNCF (post-training, calibrated on the bundled demo corpus): faster on some CPUs,
not exact; its rank agreement is measured in ``benchmarks/bench.py --suites peers``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path

import torch

from ettin_rerank.engine.activation import CALIBRATION_FILE
from ettin_rerank.engine.export import PaddedEncoder, pad_batch, quiet_tracing
from ettin_rerank.engine.scorers import PackedModernBertScorer, encoder_pooling_head
from ettin_rerank.engine.threads import ThreadGovernor, torch_threads
from ettin_rerank.engine.tokenization import Window
from ettin_rerank.errors import ModelLoadError

logger = logging.getLogger(__name__)

EXPORT_VERSION = 3
"""Bumped whenever :class:`PaddedEncoder` or a cache entry's layout changes, or entries written before may be wrong
(old entries are then not read). 3: a float32 entry converted from a bfloat16 load held bfloat16-rounded weights."""
MANIFEST = "entry.json"
"""A cache entry's record of its files (size and CRC-32 each), written last, checked on every load."""
LEFTOVER_AGE_S = 3600
"""A ``.partial-*`` (being written) or ``.stale-*`` (being removed) folder this old was left by a killed process
(writing one takes seconds to a minute): the next conversion removes it."""
CALIBRATION_MAX_TOKENS = 512
"""int8 calibration windows are at most this long (the passages RAG reranks; longer windows cost minutes)."""
STREAMS_MAX_WEIGHT_BYTES = 1 << 30
"""Streams run on a second compiled copy of the weights: only for encoders whose float32 weights are at most this
(17m to 150m, where they were measured; a 1B model's copy would be 4 GB)."""
INSTALL_HINT = 'runtime="openvino" needs OpenVINO: pip install "ettin-rerank[openvino]"'
INT8_HINT = 'precision="int8" needs OpenVINO and NNCF: pip install "ettin-rerank[openvino]"'
_PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_root() -> Path:
    """Where converted models are kept: ``$ETTIN_RERANK_CACHE/openvino``, else the user's cache folder."""
    base = os.environ.get("ETTIN_RERANK_CACHE")
    if base:
        return Path(base).expanduser() / "openvino"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ettin-rerank" / "openvino"


def _cache_key(model_path: Path, int8: bool) -> str:
    """Identifies a conversion: the checkpoint's files (path, size, modification time; not the calibration that
    ``ettin-rerank calibrate`` writes beside them, which leaves the encoder as it was) and the versions used."""
    stats = []
    for path in sorted(Path(model_path).rglob("*")):
        relative = str(path.relative_to(model_path))
        if path.name.startswith(".") or relative == CALIBRATION_FILE:
            continue
        try:
            info = path.stat()
        except OSError:  # a broken link
            continue
        if stat.S_ISREG(info.st_mode):
            stats.append((relative, info.st_size, info.st_mtime_ns))
    names = ("openvino", "torch", "transformers", *(("nncf",) if int8 else ()))
    versions = {name: _version(name) for name in names}
    blob = json.dumps({"path": str(Path(model_path).resolve()), "files": stats, "versions": versions,
                       "export": EXPORT_VERSION, "int8": int8}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def compiled_threads(threads: int, max_threads: int) -> int:
    """The thread count to run ``threads`` on: the largest of ``max_threads``, ``max_threads // 2``,
    ``max_threads // 4``, ..., 1 that is at most ``threads``, so that a busy machine compiles at most
    log2(``max_threads``) + 1 models (each compile runs on the scoring path), not one per count."""
    count = max_threads
    while count > threads and count > 1:
        count //= 2
    return count


class OpenVINOScorer:
    """Scores windows with the checkpoint's encoder compiled by OpenVINO for this CPU, then the float32 head.

    Args:
        cross_encoder: The loaded checkpoint, in float32 (ModernBERT layouts only, as
            :class:`PackedModernBertScorer`); its encoder's weights are freed once OpenVINO holds them (the head
            runs in PyTorch).
        model_path: Its folder (the cache key).
        dtype: Inference precision (float32, bfloat16 or float16).
        threads: The engine's thread governor: how many threads each batch may use (fewer under contention).
        streams: Batches of several windows in flight at once (:meth:`score_batches`), each on an OpenVINO stream,
            when all the threads are free (1: one at a time; more only for encoders within
            :data:`STREAMS_MAX_WEIGHT_BYTES` and with a thread per stream).
        pad_id: Token id written into padding (masked out).
        calibration: For ``int8``: a function returning calibration batches ``[(input_ids, attention_mask)]``.
    """

    def __init__(self, cross_encoder, model_path: Path, *, dtype: torch.dtype, threads: ThreadGovernor,
                 streams: int = 1, pad_id: int = 0,
                 calibration: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]] | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as error:
            raise ModelLoadError(INT8_HINT if calibration else INSTALL_HINT) from error
        if not PackedModernBertScorer.supports(cross_encoder):
            msg = ("runtime='openvino' runs ModernBERT checkpoints (the Ettin rerankers, "
                   "ModernBertForSequenceClassification); this model runs on runtime='torch'")
            raise ValueError(msg)
        encoder, pooling, self._head = encoder_pooling_head(cross_encoder)
        if any(p.dtype != torch.float32 for p in encoder.parameters()):
            msg = ("runtime='openvino' converts the checkpoint's float32 weights (dtype is OpenVINO's inference "
                   "precision): load the cross-encoder in float32")
            raise ValueError(msg)
        self._pad_id = pad_id
        weight_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
        fits = streams > 1 and threads.max_threads >= streams and weight_bytes <= STREAMS_MAX_WEIGHT_BYTES
        self.streams = streams if fits else 1
        core = ov.Core()
        model, entry = _cached_model(ov, core, model_path, lambda: self._convert(ov, encoder, pooling),
                                          calibration)
        encoder.to("meta")  # OpenVINO holds the weights now: PyTorch's float32 copy is freed (shapes kept)
        self.path = entry / "model.xml"
        self._ov, self._core, self._model, self._threads = ov, core, model, threads
        self._precision = _PRECISION_HINTS[dtype]
        self._compiled: dict[int, object] = {}
        self._compile_lock = threading.Lock()
        self._compiled_for(threads.max_threads)
        self._split = None
        if self.streams > 1:
            logger.info("OpenVINO: %d batches at a time, on streams of %d thread(s) each",
                        self.streams, threads.max_threads // self.streams)
            self._split = self._compile(threads.max_threads, self.streams)
            if threads.max_threads % self.streams == 0:  # one stream of it is the model for max / streams threads
                self._compiled[threads.max_threads // self.streams] = self._split
        self._local = threading.local()

    def _compile(self, threads: int, streams: int) -> object:
        """``threads`` threads in ``streams`` streams, not pinned to cores: OpenVINO pins them by default on Linux,
        and a pinned thread cannot move off a core another process keeps busy (150m f32, AMX, two busy
        neighbours: 1.11x ST fp32 pinned, 1.40x not; the same speed on an idle machine)."""
        config = {"INFERENCE_PRECISION_HINT": self._precision, "NUM_STREAMS": str(streams),
                  "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
                  "INFERENCE_NUM_THREADS": str(threads), "ENABLE_CPU_PINNING": "NO"}
        return self._core.compile_model(self._model, "CPU", config)

    def _compiled_for(self, threads: int) -> object:
        """The model compiled for ``threads`` threads (OpenVINO fixes the count at compile time; each count
        :func:`compiled_threads` gives under contention is compiled on first use, then kept)."""
        compiled = self._compiled.get(threads)
        if compiled is None:
            with self._compile_lock:
                compiled = self._compiled.get(threads)
                if compiled is None:
                    compiled = self._compiled[threads] = self._compile(threads, 1)
        return compiled

    def _request(self, compiled: object) -> object:
        """An infer request of ``compiled`` for the calling thread (the engine is shared between threads)."""
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        return request

    def _convert(self, ov, encoder, pooling: str) -> object:
        """The encoder and pooling as an OpenVINO model (float32 weights; the precision is a compile hint)."""
        logger.info("OpenVINO: converting the checkpoint once (kept in %s)", cache_root())
        module = PaddedEncoder(encoder, pooling).eval()
        example = pad_batch([[self._pad_id + 1] * 20, [self._pad_id + 1] * 9])
        # tracing first is ~10x faster than handing OpenVINO the module (5 s vs 50 s, 17m)
        with torch.no_grad(), quiet_tracing():
            traced = torch.jit.trace(module, example, check_trace=False)
            inputs = [(name, [-1, -1], ov.Type.i64) for name in ("input_ids", "attention_mask")]
            return ov.convert_model(traced, example_input=example, input=inputs)

    def __call__(self, windows: list[Window]) -> torch.Tensor:
        return self._run_alone(windows, self._threads.choose())

    def _run_alone(self, windows: list[Window], threads: int) -> torch.Tensor:
        request = self._request(self._compiled_for(compiled_threads(threads, self._threads.max_threads)))
        inputs = self._inputs(windows)
        with self._threads.timed(threads, sum(len(w.input_ids) for w in windows)):
            request.infer(inputs)
        return self._head_scores(torch.from_numpy(request.get_output_tensor(0).data.copy()))

    def score_batches(self, batches: Iterable[list[Window]], share: int) -> Iterator[torch.Tensor]:
        """The scores of each batch, in order, with up to :attr:`streams` batches in flight at once while all the
        threads are free (``streams`` > 1). A batch over its ``share`` of the token budget (one long window: padded
        tokens = its length) runs alone on all the threads, so that the tokens in flight stay within ``streams`` x
        ``share``; under contention every batch runs alone, on the governor's count, timed for it."""
        queue = getattr(self._local, "queue", None)
        if queue is None:  # per calling thread, as the infer requests
            queue = self._local.queue = self._ov.AsyncInferQueue(self._split, self.streams)
        pooled: dict[int, torch.Tensor] = {}  # batch number -> pooled vectors, filled as each batch finishes
        queue.set_callback(lambda request, number: pooled.__setitem__(
            number, torch.from_numpy(request.get_output_tensor(0).data.copy())))
        started = finished = 0
        try:
            for windows in batches:
                threads = self._threads.choose()
                alone = threads < self._threads.max_threads or self._threads.contended
                if alone or len(windows) * max(len(w.input_ids) for w in windows) > share:
                    queue.wait_all()
                    while finished < started:
                        yield self._head_scores(pooled.pop(finished))
                        finished += 1
                    yield self._run_alone(windows, threads)
                    continue
                queue.start_async(self._inputs(windows), started)  # waits for a free stream, whichever it is
                started += 1
                while finished in pooled:  # in order: a later batch may finish first
                    yield self._head_scores(pooled.pop(finished))
                    finished += 1
            queue.wait_all()
            while finished < started:
                yield self._head_scores(pooled.pop(finished))
                finished += 1
        finally:  # stopped early (a cancelled call, an error): no request is left running
            queue.wait_all()

    def _inputs(self, windows: list[Window]) -> dict[str, object]:
        ids, mask = pad_batch([w.input_ids for w in windows], pad_id=self._pad_id)
        return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

    def _head_scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """The float32 head on one torch thread: it is a few small ops, run while OpenVINO's threads hold the cores
        (AVX2, 17m, two streams: 13 ms a batch on two torch threads spinning beside them, 1 ms on one)."""
        with torch_threads(1):
            return self._head(pooled.float()).reshape(len(pooled))


def _cached_model(ov, core, model_path: Path, convert: Callable[[], object],
                  calibration: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]] | None) -> tuple[object, Path]:
    """The converted model and its cache entry: read if the entry is intact, else converted (int8: the float32
    entry quantized) and written first; the model is always the one read back from disk, so that every load
    computes the same numbers."""
    entry = cache_root() / _cache_key(model_path, calibration is not None)
    model = _read_entry(core, entry)
    if model is not None:
        return model, entry
    if calibration is None:
        model = convert()
    else:
        float32, _ = _cached_model(ov, core, model_path, convert, None)
        model = _quantize_int8(float32, calibration())
    _write_entry(ov, model, entry)
    try:
        return core.read_model(entry / "model.xml"), entry
    except RuntimeError as error:
        msg = f"OpenVINO cannot read the model it just wrote to {entry}: {_first_line(error)}"
        raise ModelLoadError(msg) from None


def _checksums(folder: Path) -> dict[str, list[int]]:
    """``{file name: [size, CRC-32]}`` of a cache entry's files (the manifest excluded)."""
    result = {}
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST or not path.is_file():
            continue
        crc = 0
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        result[path.name] = [path.stat().st_size, crc]
    return result


def _entry_problem(entry: Path) -> str | None:
    """Why a cache entry cannot be trusted, or ``None`` when its files are those its manifest records."""
    try:
        recorded = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {MANIFEST}"
    try:
        found = _checksums(entry)
    except OSError as error:
        return f"a file cannot be read ({error})"
    if recorded != found or "model.xml" not in found:
        return f"its files are not the ones {MANIFEST} records (truncated or overwritten)"
    return None


def _read_entry(core, entry: Path) -> object | None:
    """The model of an intact cache entry; ``None`` if there is none, or if it was corrupt (then it is logged and
    removed, to be converted again)."""
    if not entry.exists():
        return None
    problem = _entry_problem(entry)
    if problem is None:
        try:
            logger.info("OpenVINO: reading the converted model %s", entry)
            return core.read_model(entry / "model.xml")
        except RuntimeError as error:
            problem = f"OpenVINO cannot read it: {_first_line(error)}"
    logger.warning("OpenVINO cache entry %s is corrupt (%s): converting the checkpoint again", entry, problem)
    _discard(entry)
    return None


def _write_entry(ov, model, entry: Path) -> None:
    """Save ``model`` as the cache entry ``entry``: written beside, with its manifest, then renamed (complete, or not
    there at all); if another process renamed an intact entry there first, that one stands."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(entry.parent)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=entry.parent))
    try:
        ov.save_model(model, staging / "model.xml", compress_to_fp16=False)
        (staging / MANIFEST).write_text(json.dumps(_checksums(staging)), encoding="utf-8")
        try:
            staging.rename(entry)
        except OSError:
            if _entry_problem(entry) is not None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_leftovers(folder: Path) -> None:
    """Remove what killed processes left in the cache (half-written or half-removed entries, older than
    :data:`LEFTOVER_AGE_S`); folders other processes are writing now are left alone."""
    cutoff = time.time() - LEFTOVER_AGE_S
    for path in [*folder.glob(".partial-*"), *folder.glob(".stale-*")]:
        try:
            if path.is_dir() and path.stat().st_mtime < cutoff:
                logger.info("OpenVINO: removing %s, left by a process that stopped while writing the cache", path)
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # removed meanwhile by another process


def _discard(entry: Path) -> None:
    """Remove a cache entry: renamed aside first, so that no reader sees it half deleted."""
    aside = entry.with_name(f".stale-{uuid.uuid4().hex}")
    try:
        entry.rename(aside)
    except OSError:
        return  # gone already (another process discarded it)
    shutil.rmtree(aside, ignore_errors=True)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _quantize_int8(model, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    try:
        import nncf
    except ImportError as error:
        raise ModelLoadError(INT8_HINT) from error
    dataset = nncf.Dataset([{"input_ids": ids.numpy(), "attention_mask": mask.numpy()} for ids, mask in batches])
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))


def calibration_batches(tokenizer, max_length: int, count: int = 48,
                        batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """int8 calibration inputs: ``count`` windows of the bundled demo corpus (each title as a query against a spread
    of passages, the matching one included), at most ``max_length`` tokens, in batches of one padded shape (NNCF
    then collects its statistics on one compiled shape: 48 windows take seconds, not a minute). ``max_length`` is
    capped at :data:`CALIBRATION_MAX_TOKENS`."""
    from importlib import resources

    max_length = min(max_length, CALIBRATION_MAX_TOKENS)

    lines = resources.files("ettin_rerank").joinpath("data/demo_corpus.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in lines.splitlines() if line.strip()]
    documents = tokenizer.encode_documents([r["text"] for r in rows])
    pairs = ((step, number, row) for step in range(len(rows)) for number, row in enumerate(rows))
    windows = []
    for step, number, row in itertools.islice(pairs, count):
        query = tokenizer.encode_query(row["title"])[: max_length // 2]
        room = max(1, max_length - len(query) - tokenizer.template.num_special)
        ids = documents[(number + 7 * step) % len(documents)].ids[:room]
        windows.append(tokenizer.build(0, query, ids, 0, len(ids)).input_ids)
    longest = max(len(w) for w in windows)
    return [pad_batch(windows[i : i + batch], multiple=longest) for i in range(0, len(windows), batch)]
