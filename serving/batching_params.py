"""`--batching_parameters_file`: TF Serving's text-format BatchingParameters, read and checked.

The file is the one tensorflow_model_server reads (and the one releases/deploy/image_context.py writes into
serving images), e.g.

    max_batch_size { value: 32 }
    batch_timeout_micros { value: 2000 }
    max_enqueued_batches { value: 100 }
    num_batch_threads { value: 4 }
    allowed_batch_sizes: 8
    allowed_batch_sizes: 16
    allowed_batch_sizes: 32

Defaults and rules are TF Serving's (server.cc, bundle_factory_util.{h,cc},
shared_batch_scheduler.h, batching_session.cc). Where TF Serving only finds a mistake when the
first model loads, it is found here before anything loads; either way start-up fails.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from .config import read_text_proto
from .errors import ServingError, invalid_argument

# server.cc names the pool this when --enable_batching comes without a file; with a file that
# does not name one, SharedBatchScheduler's own default applies.
FLAG_ONLY_THREAD_POOL = "model_server_batch_threads"
DEFAULT_THREAD_POOL = "batch_threads"

# session_bundle_config.proto's BatchingParameters, field for field. tensorflow-serving-api does
# not ship that module, so the message is declared here, in a private pool (no clash should the
# real module ever be installed).
_PROTO = """
name: "tensorflow_serving/servables/tensorflow/session_bundle_config.proto"
package: "tensorflow.serving"
dependency: "google/protobuf/wrappers.proto"
syntax: "proto3"
message_type {
  name: "BatchingParameters"
  field { name: "max_batch_size" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" }
  field { name: "batch_timeout_micros" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" }
  field { name: "max_enqueued_batches" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" }
  field { name: "num_batch_threads" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" }
  field { name: "thread_pool_name" number: 5 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.StringValue" }
  field { name: "allowed_batch_sizes" number: 6 label: LABEL_REPEATED type: TYPE_INT64 }
  field { name: "pad_variable_length_inputs" number: 7 label: LABEL_OPTIONAL type: TYPE_BOOL }
  field { name: "enable_large_batch_splitting" number: 8 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.BoolValue" }
  field { name: "max_execution_batch_size" number: 9 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" }
}
"""
_message_class: Any = None


def batching_parameters_class() -> Any:
    """The `tensorflow.serving.BatchingParameters` message class."""
    global _message_class
    if _message_class is None:
        pool = descriptor_pool.DescriptorPool()
        wrappers = descriptor_pb2.FileDescriptorProto()
        wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
        pool.Add(wrappers)
        pool.Add(text_format.Parse(_PROTO, descriptor_pb2.FileDescriptorProto()))
        _message_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
    return _message_class


def schedulable_cpus() -> int:
    """port::MaxParallelism(): the default number of batch threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BatchingOptions:
    """What the scheduler and the batching servable act on (QueueOptions + BatchingSessionOptions).
    The defaults are SharedBatchScheduler's."""

    max_batch_size: int = 1000            # input_batch_size_limit: larger requests are refused
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 0            # 0 here means: one per schedulable CPU
    thread_pool_name: str = FLAG_ONLY_THREAD_POOL
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0     # 0: max_batch_size (always, without splitting)

    @property
    def execution_batch_size(self) -> int:
        """The largest batch the model is called with (GetMaxExecutionBatchSize)."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    @property
    def threads(self) -> int:
        return self.num_batch_threads or schedulable_cpus()


def read_options(path: str) -> BatchingOptions:
    """Parse and check a batching parameters file; ServingError(INVALID_ARGUMENT/NOT_FOUND) names
    the file and what is wrong."""
    message = read_text_proto(path, batching_parameters_class()())
    try:
        return options_from_message(message)
    except ServingError as exc:
        raise invalid_argument(f"Invalid batching parameters in {path}: {exc.message}") from None


def options_from_message(message: Any) -> BatchingOptions:
    def value(name: str, default: Any) -> Any:
        return getattr(message, name).value if message.HasField(name) else default

    splitting = bool(value("enable_large_batch_splitting", False))
    max_batch_size = value("max_batch_size", BatchingOptions.max_batch_size)
    options = BatchingOptions(
        max_batch_size=max_batch_size,
        batch_timeout_micros=value("batch_timeout_micros", BatchingOptions.batch_timeout_micros),
        max_enqueued_batches=value("max_enqueued_batches", BatchingOptions.max_enqueued_batches),
        num_batch_threads=value("num_batch_threads", 0),
        thread_pool_name=value("thread_pool_name", DEFAULT_THREAD_POOL),
        allowed_batch_sizes=tuple(message.allowed_batch_sizes),
        pad_variable_length_inputs=message.pad_variable_length_inputs,
        enable_large_batch_splitting=splitting,
        max_execution_batch_size=value("max_execution_batch_size", max_batch_size) if splitting else 0)
    if message.HasField("num_batch_threads") and options.num_batch_threads < 1:
        raise invalid_argument(f"num_batch_threads must be positive; was {options.num_batch_threads}")
    _check_queue(options)
    _check_allowed_sizes(options)
    if not splitting and options.max_enqueued_batches == 0:
        # SharedBatchScheduler::AddQueue rewrites 0 to 1 for old low-QPS models.
        options = BatchingOptions(**{**options.__dict__, "max_enqueued_batches": 1})
    return options


def _check_queue(options: BatchingOptions) -> None:
    """SharedBatchScheduler::AddQueue's checks, with the file's field names."""
    if options.max_batch_size < 1:
        raise invalid_argument(f"max_batch_size must be positive; was {options.max_batch_size}")
    if options.batch_timeout_micros < 0:
        raise invalid_argument(f"batch_timeout_micros must be non-negative; was {options.batch_timeout_micros}")
    if options.max_enqueued_batches < 0 or (options.enable_large_batch_splitting
                                            and options.max_enqueued_batches == 0):
        raise invalid_argument(f"max_enqueued_batches must be positive; was {options.max_enqueued_batches}")
    if options.enable_large_batch_splitting:
        if options.max_execution_batch_size < 1:
            raise invalid_argument(
                f"max_execution_batch_size must be positive; was {options.max_execution_batch_size}")
        if options.max_batch_size < options.max_execution_batch_size:
            raise invalid_argument(
                "When enable_large_batch_splitting is true, max_batch_size must be greater than or equal "
                f"to max_execution_batch_size; max_batch_size was {options.max_batch_size}, "
                f"max_execution_batch_size {options.max_execution_batch_size}")


def _check_allowed_sizes(options: BatchingOptions) -> None:
    """WrapSessionForBatching: the last entry is max_batch_size, splitting or not. TF Serving checks
    the order only when splitting; an unordered list silently pads to the wrong size there, so it
    is refused always."""
    sizes = options.allowed_batch_sizes
    if not sizes:
        return
    if any(size < 1 for size in sizes):
        raise invalid_argument(f"allowed_batch_sizes entries must be positive; got {list(sizes)}")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise invalid_argument("allowed_batch_sizes entries must be monotonically increasing")
    if sizes[-1] != options.max_batch_size:
        raise invalid_argument("Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                               f"{sizes[-1]}; expected {options.max_batch_size}")


def options_from_flags(enable_batching: bool, parameters_file: str) -> BatchingOptions | None:
    """server.cc: --enable_batching alone uses the defaults; a file without it is an error."""
    if not enable_batching:
        if parameters_file:
            raise invalid_argument("server_options.batching_parameters_file is set without setting "
                                   "server_options.enable_batching to true.")
        return None
    return read_options(parameters_file) if parameters_file else BatchingOptions()
