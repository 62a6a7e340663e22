"""Request batching (`--enable_batching`), as TF Serving's SharedBatchScheduler + BatchingSession.

Concurrent calls of one loaded version's signature (with the same input names) are queued,
merged along the 0th dimension into one model call, and the outputs are split back per caller:

* one scheduler per server: `num_batch_threads` threads shared by every queue, taking batches
  round-robin; one queue per (version, signature, input names), made on first use;
* a queue is a line of batches, the last one open. A task joins the open batch; if it would not
  fit in `max_execution_batch_size` (= `max_batch_size` unless splitting) the open batch closes
  and a new one opens. A task larger than `max_batch_size` is INVALID_ARGUMENT; one that finds
  `max_enqueued_batches` batches and no room is UNAVAILABLE ("...queue ... is full");
* a free thread takes the oldest closed batch, or the open one once it is full or its first task
  has waited `batch_timeout_micros`. With timeout 0, batches form only while every thread is
  busy, as in TF Serving;
* the batch is padded up to the next `allowed_batch_sizes` entry with copies of the last task's
  first row; inputs whose inner dimensions differ fail the batch unless
  `pad_variable_length_inputs` pads them (with each tensor's first element);
* `enable_large_batch_splitting` cuts a request into pieces that fill the open batch and then
  whole batches; the caller gets the pieces' outputs joined back.

Every run() of the wrapped servable goes through here, so Predict, Classify, Regress and warmup
are all batched, as a batching session batches every Session::Run. Metrics are TF Serving's
`:tensorflow:serving:batching_session:*` (monitoring.py).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .batching_params import BatchingOptions
from .errors import ServingError, failed_precondition, internal, invalid_argument, unavailable
from .monitoring import Family, ServingMetrics, exponential_buckets
from .servable import Arrays, Servable

log = logging.getLogger(__name__)

_SIZE_BUCKETS = exponential_buckets(1, 2, 14)
INPUT_BATCH_SIZE = Family(":tensorflow:serving:batching_session:input_batch_size", "histogram",
                          "Tracks the batch size distribution on the inputs.", _SIZE_BUCKETS)
PROCESSED_BATCH_SIZE = Family(":tensorflow:serving:batching_session:processed_batch_size", "histogram",
                              "Tracks the batch size distribution on processing.", _SIZE_BUCKETS)
PADDING_SIZE = Family(":tensorflow:serving:batching_session:padding_size", "histogram",
                      "Tracks the padding size distribution on batches.", _SIZE_BUCKETS)
QUEUING_LATENCY = Family(":tensorflow:serving:batching_session:queuing_latency", "histogram",
                         "Distribution of wall time spent (in microseconds) in queuing",
                         exponential_buckets(100, 1.2, 52))
WRAPPED_RUN_COUNT = Family(":tensorflow:serving:batching_session:wrapped_run_count", "counter",
                           "Total count of run calls on the wrapped session")
FAMILIES = (INPUT_BATCH_SIZE, PROCESSED_BATCH_SIZE, PADDING_SIZE, QUEUING_LATENCY, WRAPPED_RUN_COUNT)

Run = Callable[[Arrays], Arrays]


# --- one caller, its pieces, the batches they wait in ------------------------------------------

class _Request:
    """One caller's run(): `parts` pieces (1 unless split); the caller waits on `done`."""

    def __init__(self, parts: int) -> None:
        self.done = threading.Event()
        self.error: ServingError | None = None
        self._lock = threading.Lock()
        self._results: list[Arrays] = [{} for _ in range(parts)]
        self._remaining = parts

    def finish(self, index: int, outputs: Arrays | None = None, error: ServingError | None = None) -> None:
        with self._lock:
            if error is not None:
                self.error = self.error or error
            else:
                self._results[index] = outputs or {}
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self.done.set()

    def outputs(self) -> Arrays:
        if len(self._results) == 1:
            return self._results[0]
        return {alias: np.concatenate([part[alias] for part in self._results]) for alias in self._results[0]}


@dataclass
class _Task:
    request: _Request
    index: int
    inputs: Arrays
    size: int
    enqueued: float


@dataclass
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    started: float = 0.0  # when the first task joined (open_batch_start_time_micros_)


class BatchQueue:
    """One queue: a line of batches, the last one open. Guarded by its scheduler's lock."""

    def __init__(self, run: Run, options: BatchingOptions) -> None:
        self.run = run
        self.options = options
        self.batches: collections.deque[_Batch] = collections.deque([_Batch()])
        self.in_flight = 0        # batches taken by a thread and not yet done
        self.retired = False      # its version unloaded: drain, then leave the scheduler
        self.registered = True

    @property
    def open(self) -> _Batch:
        return self.batches[-1]

    def check_room(self, size: int) -> None:
        """Queue::ValidateBatchTaskQueueCapacity."""
        options, limit = self.options, self.options.execution_batch_size
        if size > options.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                                   f"{options.max_batch_size}")
        if options.enable_large_batch_splitting:
            capacity = (options.max_enqueued_batches - len(self.batches)) * limit + limit - self.open.size
            if size > capacity:
                raise unavailable(
                    f"The batch scheduling queue to which this task was submitted is full; task size is {size} "
                    f"but scheduling capacity is only {capacity} (num_enqueued_batches={len(self.batches)}, "
                    f"max_enqueued_batches={options.max_enqueued_batches}, open_batch_size={self.open.size}, "
                    f"max_execution_batch_size={limit})")
        elif self.open.size + size > options.max_batch_size and len(self.batches) >= options.max_enqueued_batches:
            raise unavailable(
                f"The batch scheduling queue to which this task was submitted is full; currently "
                f"{len(self.batches)} batches enqueued and max_enqueued_batches is {options.max_enqueued_batches}")

    def piece_sizes(self, size: int) -> list[int]:
        """InputSplitMetadata: fill the open batch, then whole batches, then the rest."""
        if not self.options.enable_large_batch_splitting:
            return [size]
        limit = self.options.execution_batch_size
        first = min(limit - self.open.size, size)
        rest = size - first
        pieces = ([first] if first > 0 else []) + [limit] * (rest // limit)
        if rest % limit:
            pieces.append(rest % limit)
        return pieces or [size]  # a request of 0 rows is one (empty) piece

    def add(self, task: _Task) -> None:
        if self.open.size + task.size > self.options.execution_batch_size:
            self.batches.append(_Batch())
        if not self.open.tasks:
            self.open.started = task.enqueued
        self.open.tasks.append(task)
        self.open.size += task.size

    def deadline(self) -> float | None:
        """When the open batch becomes schedulable by timeout (None: empty)."""
        if not self.open.tasks:
            return None
        return self.open.started + self.options.batch_timeout_micros / 1e6

    def take(self, now: float) -> _Batch | None:
        """Queue::ScheduleBatch: the oldest closed batch, closing the open one if it is due."""
        if len(self.batches) == 1 and self.open.tasks and (
                self.retired or self.open.size >= self.options.execution_batch_size or now >= self.deadline()):
            self.batches.append(_Batch())
        if len(self.batches) >= 2:
            self.in_flight += 1
            return self.batches.popleft()
        return None

    def idle(self) -> bool:
        return self.in_flight == 0 and len(self.batches) == 1 and not self.open.tasks


# --- the scheduler ----------------------------------------------------------------------------

class BatchScheduler:
    """SharedBatchScheduler: a fixed pool of threads serving every queue round-robin."""

    def __init__(self, options: BatchingOptions, metrics: ServingMetrics) -> None:
        self.options = options
        self._metrics = metrics
        metrics.register(*FAMILIES)
        self._cond = threading.Condition()
        self._queues: list[BatchQueue] = []
        self._next = 0
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{options.thread_pool_name}_{i}", daemon=True)
                         for i in range(options.threads)]
        for thread in self._threads:
            thread.start()

    def add_queue(self, run: Run) -> BatchQueue:
        queue = BatchQueue(run, self.options)
        with self._cond:
            self._queues.append(queue)
        return queue

    def retire(self, queue: BatchQueue) -> None:
        """The version unloaded: what is queued runs now; the queue leaves once empty."""
        with self._cond:
            queue.retired = True
            self._cond.notify()

    def run(self, queue: BatchQueue, inputs: Arrays, size: int) -> Arrays:
        """Queue a caller's inputs, wait for its batch, return its share of the outputs."""
        request = self._submit(queue, inputs, size)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.outputs()

    def _submit(self, queue: BatchQueue, inputs: Arrays, size: int) -> _Request:
        with self._cond:
            # Recorded under the lock, before the task is accepted or refused (TF Serving records it
            # per input tensor, before Schedule()): once a scrape shows it, the task is queued.
            for _ in inputs:
                self._metrics.observe(INPUT_BATCH_SIZE, size)
            queue.check_room(size)
            pieces = queue.piece_sizes(size)
            request, start, now = _Request(len(pieces)), 0, time.monotonic()
            for index, piece in enumerate(pieces):
                part = inputs if len(pieces) == 1 else {k: v[start:start + piece] for k, v in inputs.items()}
                queue.add(_Task(request, index, part, piece, now))
                start += piece
            if not queue.registered:  # a straggler after its queue drained and left
                queue.registered = True
                self._queues.append(queue)
            self._cond.notify(len(pieces))
        return request

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                found = self._take()
                while found is None:
                    if self._stopping:
                        return
                    self._cond.wait(self._wait_seconds())
                    found = self._take()
                queue, batch = found
                if self._pending():  # let an idle thread take it or time it from now
                    self._cond.notify()
            process_batch(queue, batch, self._metrics)
            with self._cond:
                queue.in_flight -= 1

    def _take(self) -> tuple[BatchQueue, _Batch] | None:
        """GetNextWorkItem_Locked: round-robin from the queue after the last one served."""
        now = time.monotonic()
        for _ in range(len(self._queues)):
            if not self._queues:
                break
            self._next %= len(self._queues)
            queue = self._queues[self._next]
            batch = queue.take(now)
            if batch is None and queue.retired and queue.idle():
                queue.registered = False
                del self._queues[self._next]
                continue
            self._next += 1
            if batch is not None:
                return queue, batch
        return None

    def _pending(self) -> bool:
        return any(len(q.batches) >= 2 or q.open.tasks for q in self._queues)

    def _wait_seconds(self) -> float | None:
        deadlines = [d for d in (q.deadline() for q in self._queues) if d is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None


def process_batch(queue: BatchQueue, batch: _Batch, metrics: ServingMetrics) -> None:
    """BatchingSession::ProcessBatch: merge, one model call, split; every task gets the outcome."""
    options, now = queue.options, time.monotonic()
    for task in batch.tasks:
        metrics.observe(QUEUING_LATENCY, (now - task.enqueued) * 1e6, (("thread_pool_name", options.thread_pool_name),))
    try:
        merged, padding = merge_inputs(batch.tasks, options)
        metrics.observe(PADDING_SIZE, padding, (("execution_batch_size", str(batch.size + padding)),))
        metrics.observe(PROCESSED_BATCH_SIZE, batch.size + padding)
        try:
            outputs = queue.run(merged)
        finally:
            metrics.increment(WRAPPED_RUN_COUNT)
        shares = split_outputs(outputs, [task.size for task in batch.tasks], padding)
    except ServingError as exc:
        _fail(batch, exc)
    except Exception as exc:  # a bug must fail the callers, not leave them waiting
        log.exception("Batch of %d tasks failed", len(batch.tasks))
        _fail(batch, internal(f"{type(exc).__name__}: {exc}"))
    else:
        for task, share in zip(batch.tasks, shares):
            task.request.finish(task.index, share)


def _fail(batch: _Batch, error: ServingError) -> None:
    for task in batch.tasks:
        task.request.finish(task.index, error=error)


# --- merging and splitting tensors -----------------------------------------------------------

def batch_size(inputs: Arrays) -> int:
    """ComputeTensorBatchSize: every input has a 0th dimension, the same for all."""
    if not inputs:
        raise invalid_argument("Batching Run() must have at least one input tensor")
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


def round_to_allowed(allowed: tuple[int, ...], size: int) -> int:
    """RoundToLowestAllowedBatchSize."""
    for allowed_size in allowed:
        if allowed_size >= size:
            return allowed_size
    return size


def merge_inputs(tasks: list[_Task], options: BatchingOptions) -> tuple[Arrays, int]:
    """MergeInputTensors: one tensor per input name, plus the padding rows added."""
    total = sum(task.size for task in tasks)
    padding = round_to_allowed(options.allowed_batch_sizes, total) - total if total else 0
    merged = {}
    for name in tasks[0].inputs:
        arrays = [task.inputs[name] for task in tasks]
        arrays = _pad_inner(name, arrays) if options.pad_variable_length_inputs else _same_inner(name, arrays)
        if padding:
            donor = next(a for a in reversed(arrays) if len(a))  # the last task's first row
            arrays.append(np.repeat(donor[:1], padding, axis=0))
        merged[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return merged, padding


def _same_inner(name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    if any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
        raise failed_precondition(
            f"Tensors with name '{name}' from different tasks have different shapes and padding is turned off. "
            "Set pad_variable_length_inputs to true, or ensure that all tensors with the same name have equal "
            "dimensions starting with the first dim.")
    return arrays


def _pad_inner(name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """AddPadding: pad every dimension but the 0th up to the largest, with the tensor's first value."""
    if any(not 1 <= a.ndim <= 6 for a in arrays):
        raise invalid_argument("Only tensors with rank from 1 to 6 can be padded.")
    if len({a.ndim for a in arrays}) > 1:
        return _same_inner(name, arrays)  # ranks differ: nothing to pad to
    largest = np.max([a.shape for a in arrays], axis=0)
    padded = []
    for array in arrays:
        widths = [(0, 0)] + [(0, int(m) - d) for m, d in zip(largest[1:], array.shape[1:])]
        if all(after == 0 for _, after in widths):
            padded.append(array)
            continue
        if array.size == 0:
            raise invalid_argument("Got empty tensor in batch of non-empty tensors.")
        padded.append(np.pad(array, widths, constant_values=array.flat[0]))
    return padded


def split_outputs(outputs: Arrays, sizes: list[int], padding: int) -> list[Arrays]:
    """SplitOutputTensors: each task's rows of every output; the padding rows are dropped."""
    total = sum(sizes)
    cuts = np.cumsum(sizes)[:-1]
    shares: list[Arrays] = [{} for _ in sizes]
    for alias, array in outputs.items():
        array = np.asarray(array)
        if array.ndim == 0:
            raise failed_precondition("Batched output tensor has 0 dimensions")
        if array.shape[0] != total + padding:
            raise failed_precondition("Batched output tensor's 0th dimension does not equal the sum of the 0th "
                                      "dimension sizes of the input tensors")
        for share, rows in zip(shares, np.split(array[:total], cuts)):
            share[alias] = rows
    return shares


# --- the servable every front end sees ----------------------------------------------------------

class BatchingServable:
    """A loaded version whose run() goes through the scheduler (the batching session wrapper)."""

    def __init__(self, wrapped: Servable, scheduler: BatchScheduler) -> None:
        self.signature_defs = wrapped.signature_defs
        self._wrapped = wrapped
        self._scheduler = scheduler
        self._queues: dict[tuple[str, tuple[str, ...]], BatchQueue] = {}
        self._lock = threading.Lock()

    def run(self, signature_name: str, inputs: Arrays) -> Arrays:
        size = batch_size(inputs)
        return self._scheduler.run(self._queue(signature_name, tuple(sorted(inputs))), inputs, size)

    def _queue(self, signature_name: str, names: tuple[str, ...]) -> BatchQueue:
        with self._lock:
            queue = self._queues.get((signature_name, names))
            if queue is None:
                queue = self._scheduler.add_queue(lambda merged: self._wrapped.run(signature_name, merged))
                self._queues[(signature_name, names)] = queue
            return queue

    def close(self) -> None:
        with self._lock:
            queues = list(self._queues.values())
        for queue in queues:
            self._scheduler.retire(queue)
        self._wrapped.close()


def batching_loader(load: Callable[[str, bool], Servable], scheduler: BatchScheduler
                    ) -> Callable[[str, bool], Servable]:
    """Wrap every loaded version for batching (WrapSessionForBatching at load)."""
    def load_batching(version_dir: str, prefer_tflite: bool) -> Servable:
        return BatchingServable(load(version_dir, prefer_tflite), scheduler)

    return load_batching
