"""TF Serving protocol messages declared at run time, each file in a descriptor pool of its own.

Why: every generated module under ``tensorflow_serving/apis`` imports TensorFlow's own protos
(``tensorflow/core/...``), and importing any of those runs ``tensorflow/__init__`` (~3 s and
~600 MiB). A web process must never pay that, yet it checks endpoint health over gRPC. The few
messages it needs are declared here from the ``.proto`` files, with the same package, names, field
numbers and wire types, so the bytes on the wire are the ones the generated classes produce. Enum
fields are declared as ``int32`` (the same varint on the wire): callers name the values. A private
pool per file means these never clash with the generated classes when both are loaded (workers).
"""
from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

Field = descriptor_pb2.FieldDescriptorProto


def new_file(name: str, package: str = "tensorflow.serving") -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")


def add_field(message: Any, name: str, number: int, kind: int, *, repeated: bool = False,
              type_name: str = "") -> None:
    """One field of ``message`` (a DescriptorProto); ``type_name`` like ``.tensorflow.serving.ModelSpec``."""
    added = message.field.add(name=name, number=number, type=kind,
                              label=Field.LABEL_REPEATED if repeated else Field.LABEL_OPTIONAL)
    if type_name:
        added.type_name = type_name


def message_classes(file: descriptor_pb2.FileDescriptorProto) -> dict[str, type]:
    """The classes of every message ``file`` declares, by short name, from a pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{file.package}.{m.name}"))
            for m in file.message_type}


@functools.cache
def model_service_messages() -> dict[str, type]:
    """The messages of TF Serving's ModelService, from get_model_status.proto and
    model_management.proto: ``GetModelStatusRequest``/``Response`` (with the ``ModelSpec``,
    ``ModelVersionStatus`` and ``StatusProto`` they hold) and ``ReloadConfigRequest``/``Response``.

    ``state`` and ``error_code`` are enums there: plain ints here. ``ReloadConfigRequest.config`` is
    a ``ModelServerConfig`` there and ``bytes`` here: the same length-delimited field on the wire,
    filled with ``config.SerializeToString()`` (``tensorflow_serving.config`` is TensorFlow-free).
    Fields Modelyard never sends or reads (a ModelSpec's version, a reload's metrics) are left out:
    a parser skips fields it does not know."""
    file = new_file("modelyard/tensorflow_serving/model_service.proto")
    spec = file.message_type.add(name="ModelSpec")
    add_field(spec, "name", 1, Field.TYPE_STRING)
    status = file.message_type.add(name="StatusProto")
    add_field(status, "error_code", 1, Field.TYPE_INT32)
    add_field(status, "error_message", 2, Field.TYPE_STRING)
    request = file.message_type.add(name="GetModelStatusRequest")
    add_field(request, "model_spec", 1, Field.TYPE_MESSAGE, type_name=".tensorflow.serving.ModelSpec")
    version = file.message_type.add(name="ModelVersionStatus")
    add_field(version, "version", 1, Field.TYPE_INT64)
    add_field(version, "state", 2, Field.TYPE_INT32)
    add_field(version, "status", 3, Field.TYPE_MESSAGE, type_name=".tensorflow.serving.StatusProto")
    response = file.message_type.add(name="GetModelStatusResponse")
    add_field(response, "model_version_status", 1, Field.TYPE_MESSAGE, repeated=True,
              type_name=".tensorflow.serving.ModelVersionStatus")
    reload = file.message_type.add(name="ReloadConfigRequest")
    add_field(reload, "config", 1, Field.TYPE_BYTES)
    add_field(reload, "metric_names", 2, Field.TYPE_STRING, repeated=True)
    reloaded = file.message_type.add(name="ReloadConfigResponse")
    add_field(reloaded, "status", 1, Field.TYPE_MESSAGE, type_name=".tensorflow.serving.StatusProto")
    return message_classes(file)
