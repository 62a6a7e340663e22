"""The batching parameters file: TF Serving's text BatchingParameters, its defaults and rules
(serving/batching_params.py, read in-process; test_batching.py shows a server refusing bad files)."""
from __future__ import annotations

from pathlib import Path

import pytest

from releases import environments
from releases.deploy import image_context
from serving.batching_params import (
    DEFAULT_THREAD_POOL, FLAG_ONLY_THREAD_POOL, BatchingOptions, options_from_flags, read_options, schedulable_cpus)
from serving.errors import Code, ServingError


def read(tmp_path: Path, text: str) -> BatchingOptions:
    path = tmp_path / "batching.txt"
    path.write_text(text)
    return read_options(str(path))


def refused(tmp_path: Path, text: str) -> ServingError:
    with pytest.raises(ServingError) as info:
        read(tmp_path, text)
    assert info.value.code == Code.INVALID_ARGUMENT
    return info.value


@pytest.mark.parametrize("environment", [e["name"] for e in environments.DEFAULT_ENVIRONMENTS])
def test_the_file_releases_writes_into_serving_images_is_read_as_written(tmp_path, environment):
    batching = next(e for e in environments.DEFAULT_ENVIRONMENTS if e["name"] == environment)["batching"]
    options = read(tmp_path, image_context.batching_parameters_text(batching))
    assert options.max_batch_size == batching["max_batch_size"]
    assert options.batch_timeout_micros == batching["batch_timeout_micros"]
    assert options.max_enqueued_batches == batching["max_enqueued_batches"]
    assert options.num_batch_threads == options.threads == batching["num_batch_threads"]
    assert options.allowed_batch_sizes == tuple(batching["allowed_batch_sizes"])
    assert options.execution_batch_size == batching["max_batch_size"]


def test_tf_servings_own_example_file_and_the_defaults(tmp_path):
    # tensorflow_serving/servables/tensorflow/testdata/batching_config.txt
    options = read(tmp_path, "max_batch_size { value: 128 }\nbatch_timeout_micros { value: 0 }\n"
                             "max_enqueued_batches { value: 1000000 }\nnum_batch_threads { value: 8 }\n")
    assert (options.max_batch_size, options.max_enqueued_batches, options.threads) == (128, 1000000, 8)
    assert options.thread_pool_name == DEFAULT_THREAD_POOL
    defaults = read(tmp_path, "# nothing set\n")
    assert (defaults.max_batch_size, defaults.batch_timeout_micros, defaults.max_enqueued_batches) == (1000, 0, 10)
    assert defaults.threads == schedulable_cpus() and not defaults.pad_variable_length_inputs
    flag_only = options_from_flags(True, "")
    assert flag_only == BatchingOptions() and flag_only.thread_pool_name == FLAG_ONLY_THREAD_POOL
    assert options_from_flags(False, "") is None


def test_every_field_of_the_message(tmp_path):
    options = read(tmp_path, """
        max_batch_size { value: 16 } batch_timeout_micros { value: 500 } max_enqueued_batches { value: 3 }
        num_batch_threads { value: 2 } thread_pool_name { value: "pool" } allowed_batch_sizes: [4, 8, 16]
        pad_variable_length_inputs: true enable_large_batch_splitting { value: true }
        max_execution_batch_size { value: 8 }""")
    assert options == BatchingOptions(16, 500, 3, 2, "pool", (4, 8, 16), True, True, 8)
    assert options.execution_batch_size == 8


def test_zero_max_enqueued_batches_means_one_as_in_tf_serving(tmp_path):
    assert read(tmp_path, "max_enqueued_batches { value: 0 }").max_enqueued_batches == 1


@pytest.mark.parametrize("text, message", [
    ("max_batch_size: 8", "Invalid protobuf file: '"),
    ("max_batch_size { value: 8 } colour: 3", 'has no field named "colour"'),
    ("max_batch_size { value: 0 }", "max_batch_size must be positive; was 0"),
    ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative; was -1"),
    ("max_enqueued_batches { value: -2 }", "max_enqueued_batches must be positive; was -2"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be positive; was 0"),
    ("max_batch_size { value: 32 } allowed_batch_sizes: [8, 16]",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 16; expected 32"),
    ("max_batch_size { value: 16 } allowed_batch_sizes: [8, 4, 16]",
     "allowed_batch_sizes entries must be monotonically increasing"),
    ("max_batch_size { value: 16 } allowed_batch_sizes: [0, 16]", "allowed_batch_sizes entries must be positive"),
    ("allowed_batch_sizes: [8]", "last entry was 8; expected 1000"),
    ("max_batch_size { value: 4 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 8 }",
     "max_batch_size must be greater than or equal to max_execution_batch_size"),
    ("max_batch_size { value: 16 } enable_large_batch_splitting { value: true } "
     "max_execution_batch_size { value: 8 } allowed_batch_sizes: [4, 8]",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 8; expected 16"),
    ("enable_large_batch_splitting { value: true } max_enqueued_batches { value: 0 }",
     "max_enqueued_batches must be positive; was 0"),
])
def test_a_bad_file_is_refused_with_what_is_wrong(tmp_path, text, message):
    error = refused(tmp_path, text)
    assert message in error.message
    assert str(tmp_path / "batching.txt") in error.message


def test_a_file_without_enable_batching_or_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ServingError, match="batching_parameters_file is set without setting "
                                           "server_options.enable_batching to true"):
        options_from_flags(False, str(tmp_path / "batching.txt"))
    with pytest.raises(ServingError) as info:
        options_from_flags(True, str(tmp_path / "absent.txt"))
    assert info.value.code == Code.NOT_FOUND
