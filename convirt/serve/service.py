"""The case service: a model, an index folder of archive cases and a descriptor set, as a library.

`convirt serve` puts it behind HTTP (:mod:`convirt.serve.app`); everything the API answers comes from here: an explained
diagnosis (descriptor scores with their observations, probabilities if calibrated, optional saliency maps, and the kNN
vote of the nearest labelled cases: two independent opinions), case search by image or text, and the cases themselves.
Embedding goes through a micro-batcher so that concurrent requests share one forward pass and one index search. Each
query has a blocking method (``search_case``) and one to await (``search_case_async``), which holds no thread while its
batch runs: the app's endpoints await, so a request costs no thread hand-offs beyond the image decode.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import faiss
import numpy as np
import torch
from PIL import Image

from convirt._hardware import choose_serve_threads
from convirt.data.columns import IdColumn, LabelColumn, patient_of
from convirt.data.stream import pad_id_of
from convirt.data.transforms import image_transform_for
from convirt.embeddings.encode import Encoder
from convirt.models.checkpoint import LoadedModel
from convirt.models.fingerprint import model_fingerprint
from convirt.models.memory_format import to_channels_last
from convirt.retrieval import check_same_space, open_index_folder, search
from convirt.serve.batching import MicroBatcher
from convirt.serve.calibrated import Calibration, load_served_calibration
from convirt.serve.cases import CaseImages, CaseNotFound
from convirt.serve.explain import Explainer, explained_findings
from convirt.serve.shown import case_salt as salt_for
from convirt.serve.shown import check_fields, shown_metadata
from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors

log = logging.getLogger("convirt.serve")


class _QueryHits(NamedTuple):
    """One query's embedding and its nearest index entries (deepest the batch asked for)."""

    vector: np.ndarray
    scores: np.ndarray
    ids: np.ndarray


class _BatchedQuery(NamedTuple):
    """A query for a batcher, and how its answer is made from the query's hits."""

    batcher: MicroBatcher
    item: Any
    answer: Callable[[_QueryHits], Any]


class CaseService:
    """Diagnosis and search over an index folder with the model that built it.

    Args:
        loaded: The model (:func:`convirt.models.sources.load_model`); it must be the one the
            index was built with (checked by fingerprint).
        index: An index folder (`convirt index build`).
        descriptors: A descriptor set for diagnosis (a shipped name or a YAML path); ``None``: search only.
        shards: Where the indexed images are when the index rows name no files (built from shards).
        knn_k: Neighbours of the kNN vote.
        batch_wait_ms: How long a batch of queries waits for company after its first (the archive scan
            of an exact index costs about the same for one query as for sixteen).
        search_threads: faiss threads of the index searches (default: every core but one, as
            :func:`convirt._hardware.choose_serve_threads`; torch's threads are the process's own).
        show_fields: Metadata shown besides labels, view and source, by name (``key``, ``study_id``:
            they often hold the patient id; :mod:`convirt.serve.shown`).
        case_salt: Salt of the cases' ``ref`` hashes (default: ``$CONVIRT_CASE_SALT``, else random).
        calibration: A calibration file or one loaded: the findings it covers get calibrated probabilities.
        operating_point: The rule whose threshold marks findings (:mod:`convirt.serve.calibrated`).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        index: str | os.PathLike[str],
        descriptors: str | None = None,
        shards: str | os.PathLike[str] | None = None,
        knn_k: int = 10,
        batch_wait_ms: float = 5.0,
        search_threads: int | None = None,
        show_fields: Sequence[str] = (),
        case_salt: bytes | str | None = None,
        calibration: str | os.PathLike[str] | Calibration | None = None,
        operating_point: str | None = None,
    ) -> None:
        self.loaded = loaded
        self.show_fields = check_fields(show_fields)
        self._salt = salt_for(case_salt)
        self.fingerprint = model_fingerprint(loaded)  # of the weights loaded: hashed once, here
        self.folder = open_index_folder(index, fingerprint=self.fingerprint)
        self.metadata = self.folder.metadata  # a row read when a case is shown: an archive may hold millions
        # One pass over the rows; what is kept of them is arrays (a few bytes a case), never the rows.
        labels, patients = LabelColumn(), IdColumn(patient_of)
        self.images = CaseImages(self.metadata, shards, columns=(labels, patients))
        self._label_sets, self._patients = labels.sets(), patients.groups()
        self.transform = image_transform_for(loaded.preprocess_cfg, train=False)
        self.knn_k = knn_k
        self.classifier: ZeroShotClassifier | None = None
        if descriptors is not None:
            loaded.require_text("diagnosis from descriptors")
            self.descriptors = load_descriptors(descriptors)
            self.classifier = ZeroShotClassifier(loaded.model, loaded.tokenizer, self.descriptors, Method.DESCRIPTORS)
        names = self.classifier.descriptors.finding_names if self.classifier else sorted(self._label_sets.names())
        self.finding_names, made_by = list(names), (self.fingerprint, self.classifier and self.classifier.descriptors)
        self.calibrated = load_served_calibration(calibration, operating_point, None, made_by)
        self.labels = self._label_sets.matrix(self.finding_names)  # (N, F) bool
        self._model_lock = threading.Lock()  # one forward pass of the query model at a time
        # Saliency runs on its own copy of the model: a diagnosis with maps never stalls a search.
        self._explainer = Explainer(self.classifier) if self.classifier else None
        # The one encoder every command uses; weights laid out channels-last once, like its inputs
        # (oneDNN's fastest layout: 83 against 127 ms for the demo's 16 images on one core).
        to_channels_last(loaded.model)
        self.encoder = Encoder(loaded.model, pad_id=pad_id_of(loaded.tokenizer))
        self._check_precision()
        # Concurrent queries share one forward pass and one index search (a matrix product over the
        # archive for the whole batch instead of one scan per query).
        faiss.cvar.distance_compute_blas_threshold = 2  # batches of 2+ queries: one BLAS product (default 20)
        self.search_threads = search_threads or choose_serve_threads()
        wait = batch_wait_ms / 1000
        self.image_queries = MicroBatcher(self._image_batch, max_wait_s=wait)
        self.text_queries = MicroBatcher(self._text_batch, max_wait_s=wait)
        self.vector_queries = MicroBatcher(self._vector_batch, max_wait_s=wait)

    def _check_precision(self) -> None:
        """Settle the encoder's precision of each modality it serves (on an accelerator the first batch
        decides: an archive image where there is one) and check it against the index's vectors."""
        image = Image.new("L", (256, 256))
        for case in (case for case in range(min(len(self.metadata), 8)) if self.images.has_image(case)):
            try:
                image = self.images.image(case)
                break
            except (OSError, ValueError):  # a damaged archive image: the next one
                continue
        self.encoder.images(self.transform(image)[None])
        if self.loaded.has_text:
            self.encoder.texts(self.loaded.tokenizer(["no acute cardiopulmonary abnormality"]))
        for modality in self.encoder.settled:
            made = {**self.fingerprint, **self.encoder.precision(modality).as_info()}
            check_same_space(self.folder.info.fingerprint, made, what=f"index (the service's {modality} precision)")

    @torch.no_grad()
    def warm_up(self) -> None:
        """Run the model once at every batch size a batch of queries can have.

        oneDNN chooses and keeps kernels per input shape: without this the first batch of each size
        pays for that inside a request, and the resident memory grows by steps over the first
        hundreds of requests (measured: +60 MiB after 1,500 diagnoses) before it levels off.
        """
        blank = self.transform(Image.new("L", (256, 256)))
        with self._model_lock:
            for n in range(1, self.image_queries.max_batch + 1):
                self.encoder.images(blank.expand(n, *blank.shape))
                if self.loaded.has_text:
                    self.encoder.texts(self.loaded.tokenizer(["warm up"] * n))

    def _image_batch(self, items: list[tuple[torch.Tensor, int]]) -> list[_QueryHits]:
        with self._model_lock:
            vectors = self.encoder.images(torch.stack([pixels for pixels, _ in items]))
        return self._search_batch(vectors, [depth for _, depth in items])

    def _text_batch(self, items: list[tuple[str, int]]) -> list[_QueryHits]:
        with self._model_lock:
            # A query is a few words: the encoder drops the padding to the context length.
            vectors = self.encoder.texts(self.loaded.tokenizer([text for text, _ in items]))
        return self._search_batch(vectors, [depth for _, depth in items])

    def _vector_batch(self, items: list[tuple[np.ndarray, int]]) -> list[_QueryHits]:
        return self._search_batch(np.stack([vector for vector, _ in items]), [depth for _, depth in items])

    def _search_batch(self, vectors: np.ndarray, depths: list[int]) -> list[_QueryHits]:
        depth = max(1, min(max(depths), len(self.metadata)))
        # OpenMP's thread count belongs to the calling thread, and a batcher thread starts with every
        # core: set it here. With no core to spare (requests are parsed beside the search), two threads
        # made a 16-query scan of 100,000 vectors take 1.1-1.3 s where one took 26 ms.
        faiss.omp_set_num_threads(self.search_threads)
        scores, ids = search(self.folder.index, vectors.astype(np.float32), depth)
        return [_QueryHits(vectors[i], scores[i], ids[i]) for i in range(len(vectors))]

    def _exclusions(self, patient_id: str | None) -> set[int]:
        return set(self._patients.rows(patient_id).tolist()) if patient_id else set()

    def _nearest(self, hits: _QueryHits, k: int, excluded: set[int]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for score, case in zip(hits.scores, hits.ids):
            if case >= 0 and int(case) not in excluded and len(found) < k:
                found.append({**self.case(int(case)), "score": float(score)})
        return found

    @staticmethod
    def _answer(query: _BatchedQuery) -> Any:
        """The query's answer, its batch waited for in this thread."""
        return query.answer(query.batcher(query.item))

    @staticmethod
    async def _answer_async(query: _BatchedQuery) -> Any:
        """The query's answer, its batch awaited (no thread held)."""
        return query.answer(await query.batcher.run(query.item))

    def _query(
        self, batcher: MicroBatcher, query: Any, k: int, excluded: set[int], answer: Callable[..., Any] | None = None
    ) -> _BatchedQuery:
        """``query`` for ``batcher``, deep enough to leave ``excluded`` out of ``k`` hits; answered by
        ``answer(hits, k, excluded)`` (default: the nearest cases)."""
        k, answer = max(1, int(k)), answer or self._nearest
        return _BatchedQuery(batcher, (query, k + len(excluded)), lambda hits: answer(hits, k, excluded))

    def _case_vector(self, case: int) -> tuple[np.ndarray, set[int]]:
        """An archive case's stored vector, and the rows to leave out of its neighbours (it and its patient's)."""
        if not 0 <= case < len(self.metadata):
            raise CaseNotFound(case)
        try:
            vector = np.asarray(self.folder.index.reconstruct(case), dtype=np.float32)
        except RuntimeError:
            raise ValueError("this index cannot give its vectors back: search by image or text") from None
        patient = int(self._patients.codes[case])
        named = self._patients.ids[patient] != b""  # an empty patient id names no patient (as a request's)
        return vector, {case, *(self._patients.rows_of(patient).tolist() if named else ())}

    def _case_query(self, case: int, k: int, answer: Callable[..., Any] | None = None) -> _BatchedQuery:
        vector, excluded = self._case_vector(case)
        return self._query(self.vector_queries, vector, k, excluded, answer)

    def _text_query(self, text: str, k: int) -> _BatchedQuery:
        self.loaded.require_text("text search")
        return self._query(self.text_queries, text, k, set())

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """The normalised embedding of an image (batched with concurrent queries)."""
        return self.image_queries((self.transform(image), 1)).vector

    def embed_text(self, text: str) -> np.ndarray:
        """The normalised embedding of a query text (batched with concurrent queries)."""
        self.loaded.require_text("text search")
        return self.text_queries((text, 1)).vector

    def search_vector(self, vector: np.ndarray, k: int = 10, patient_id: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` nearest cases of a normalised query vector, the query's patient left out when known."""
        return self._answer(self._query(self.vector_queries, vector, k, self._exclusions(patient_id)))

    def search_image(self, image: Image.Image, k: int = 10, patient_id: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` nearest cases of an image, the query's patient left out when known."""
        # The transform runs in the caller's thread, beside the batch in flight.
        return self._answer(self._query(self.image_queries, self.transform(image), k, self._exclusions(patient_id)))

    async def search_image_async(
        self, image: Image.Image, k: int = 10, patient_id: str | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`search_image`, awaited (the transform in a worker thread, the batch without one)."""
        pixels = await asyncio.to_thread(self.transform, image)
        return await self._answer_async(self._query(self.image_queries, pixels, k, self._exclusions(patient_id)))

    def search_case(self, case: int, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` nearest cases of an archive case (its stored vector: nothing is embedded), the
        case itself and its patient's other images left out.

        Raises:
            CaseNotFound: No such id.
            ValueError: The index cannot give its vectors back (IVF without refinement).
        """
        return self._answer(self._case_query(case, k))

    async def search_case_async(self, case: int, k: int = 10) -> list[dict[str, Any]]:
        """:meth:`search_case`, awaited."""
        return await self._answer_async(self._case_query(case, k))

    def search_text(self, text: str, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` cases whose images lie nearest a text ("blunted left costophrenic angle")."""
        return self._answer(self._text_query(text, k))

    async def search_text_async(self, text: str, k: int = 10) -> list[dict[str, Any]]:
        """:meth:`search_text`, awaited."""
        return await self._answer_async(self._text_query(text, k))

    def _diagnosis_k(self, k: int | None) -> int:
        if self.classifier is None:
            raise ValueError("this service was started without --descriptors: it searches, it does not diagnose")
        return max(1, int(k or self.knn_k))

    def diagnose(self, image: Image.Image, saliency: bool = False, k: int | None = None) -> dict[str, Any]:
        """Per finding: the descriptor score with its observations (the calibrated probability and operating
        point where calibrated; saliency map), and the kNN vote of the nearest labelled cases; the neighbours.

        Raises:
            ValueError: The service has no descriptor set.
        """
        k = self._diagnosis_k(k)
        diagnosis = self._answer(self._query(self.image_queries, self.transform(image), k, set(), self._diagnosis))
        if saliency:
            self._maps().add_maps(diagnosis, lambda: self.transform(image))
        return diagnosis

    async def diagnose_async(self, image: Image.Image, saliency: bool = False, k: int | None = None) -> dict[str, Any]:
        """:meth:`diagnose`, awaited (the transform in a worker thread, saliency in the explainer's, the
        batch without one); :class:`convirt.serve.explain.SaliencyBusy` when too many wait for maps."""
        k = self._diagnosis_k(k)
        pixels = await asyncio.to_thread(self.transform, image)
        diagnosis = await self._answer_async(self._query(self.image_queries, pixels, k, set(), self._diagnosis))
        if saliency:
            await self._maps().add_maps_async(diagnosis, lambda: pixels)
        return diagnosis

    def diagnose_case(self, case: int, saliency: bool = False, k: int | None = None) -> dict[str, Any]:
        """:meth:`diagnose` of an archive case from its stored vector (nothing is embedded); the kNN
        vote leaves out the case itself and its patient's other images, whose labels would be its own.
        Saliency maps are drawn on the case's archive image.

        Raises:
            CaseNotFound: No such id, or saliency asked of a case without an image.
            ValueError: The service has no descriptor set, or the index cannot give its vectors back.
        """
        k = self._diagnosis_k(k)
        diagnosis = self._answer(self._case_query(case, k, self._diagnosis))
        if saliency:
            self._maps().add_maps(diagnosis, lambda: self.transform(self._archive_image(case)))
        return diagnosis

    async def diagnose_case_async(self, case: int, saliency: bool = False, k: int | None = None) -> dict[str, Any]:
        """:meth:`diagnose_case`, awaited."""
        k = self._diagnosis_k(k)
        diagnosis = await self._answer_async(self._case_query(case, k, self._diagnosis))
        if saliency:  # the archive image read in the explainer's thread
            await self._maps().add_maps_async(diagnosis, lambda: self.transform(self._archive_image(case)))
        return diagnosis

    def _archive_image(self, case: int) -> Image.Image:
        return self._read_archive(case, self.images.image)

    def _read_archive(self, case: int, read: Callable[[int], Any]) -> Any:
        """``read(case)`` of a case with an image; a file gone or damaged since the start is no image
        (logged by case id and error type: a message could name the file)."""
        if not 0 <= case < len(self.metadata) or not self.images.has_image(case):
            raise CaseNotFound(case)
        try:
            return read(case)
        except (OSError, ValueError) as error:
            log.warning("case %d: its image cannot be read (%s)", case, type(error).__name__)
            raise CaseNotFound(case) from None

    def _diagnosis(self, hits: _QueryHits, k: int, excluded: set[int]) -> dict[str, Any]:
        assert self.classifier is not None
        neighbours = self._nearest(hits, k, excluded)
        return explained_findings(self.classifier, hits.vector, neighbours, self.labels, self.calibrated)

    def _maps(self) -> Explainer:
        assert self._explainer is not None  # a diagnosis needs a classifier, and a classifier has one
        return self._explainer

    def case(self, case: int) -> dict[str, Any]:
        """A case's id, shown metadata and report, and its image URL where it has one.

        Raises:
            CaseNotFound: No such id.
        """
        if not 0 <= case < len(self.metadata):
            raise CaseNotFound(case)
        row = self.metadata[case]
        image = f"/v1/cases/{case}/image" if self.images.has_image(case) else None
        shown = shown_metadata(row, self._salt, self.show_fields)
        return {"id": case, **shown, "report": str(row.get("text", "")), "image_url": image}

    def case_image(self, case: int) -> bytes:
        """A case's downsized JPEG.

        Raises:
            CaseNotFound: No such id, or the case has no image this service may serve.
        """
        return self._read_archive(case, self.images.jpeg)

    def healthy(self) -> bool:
        """Every micro-batcher's worker is alive (a dead one is started again first) and none is stuck in a batch."""
        batchers = (self.image_queries, self.text_queries, self.vector_queries)
        for batcher in batchers:
            batcher.revive()
        return all(batcher.healthy() for batcher in batchers)

    def info(self) -> dict[str, Any]:
        """What the service runs: the fingerprint of the weights it loaded, the index and the descriptor set."""
        fingerprint = {k: v for k, v in self.fingerprint.items() if k != "model_config"}
        return {
            "model": fingerprint,
            "index": {"factory": self.folder.info.factory, "count": len(self.metadata), "dim": self.folder.info.dim},
            "descriptors": self.classifier.descriptors.name if self.classifier else None,
            "findings": self.finding_names,
            "knn_k": self.knn_k,
            "calibration": self.calibrated.info() if self.calibrated else None,
        }
