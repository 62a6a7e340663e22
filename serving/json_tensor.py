"""TF Serving's REST JSON <-> tensors (a port of tensorflow_serving/util/json_tensor.cc).

Request parsing follows the same rules and messages: `instances` (row format) or
`inputs` (columnar), {"b64": ...} for binary strings, strict per-dtype value
checks. Responses render floats with WriteDecimal's rules and int64 as plain JSON
integers, exactly as TF Serving does.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from .errors import ServingError, invalid_argument, unimplemented
from .servable import Arrays, SignatureDef, dtype_name

INT32_LIKE = {types_pb2.DT_INT32: (np.int32, -2**31, 2**31 - 1),
              types_pb2.DT_INT16: (np.int16, -2**31, 2**31 - 1),
              types_pb2.DT_INT8: (np.int8, -2**31, 2**31 - 1),
              types_pb2.DT_UINT8: (np.uint8, -2**31, 2**31 - 1),
              types_pb2.DT_INT64: (np.int64, -2**63, 2**63 - 1),
              types_pb2.DT_UINT32: (np.uint32, 0, 2**32 - 1),
              types_pb2.DT_UINT64: (np.uint64, 0, 2**64 - 1)}
FLOAT_LIKE = {types_pb2.DT_FLOAT: (np.float32, 24, float(np.finfo(np.float32).max), "float"),
              types_pb2.DT_DOUBLE: (np.float64, 53, float(np.finfo(np.float64).max), "double")}


# --- parsing ----------------------------------------------------------------------------

_PY_TO_RAPIDJSON = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Extra data": "The document root must not be followed by other values.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}


def parse_json(body: bytes) -> dict[str, Any]:
    """ParseJson(): rapidjson's error wording, NaN/Infinity accepted, object required."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
        doc = json.loads(text)
    except UnicodeDecodeError as exc:
        raise invalid_argument(
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise invalid_argument(
            f"JSON Parse error: {_rapidjson_message(exc, text)} at offset: {exc.pos}") from exc
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {to_text(doc)} Is not object")
    return doc


def _rapidjson_message(exc: json.JSONDecodeError, text: str) -> str:
    if exc.msg == "Expecting ',' delimiter":
        closer = "}" if _innermost_container(text[:exc.pos]) == "{" else "]"
        kind = "object member" if closer == "}" else "array element"
        return f"Missing a comma or '{closer}' after an {kind}."
    return next((v for k, v in _PY_TO_RAPIDJSON.items() if exc.msg.startswith(k)), exc.msg)


def _innermost_container(prefix: str) -> str:
    stack, in_string, escaped = [], False, False
    for char in prefix:
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def to_text(value: Any) -> str:
    """JsonValueToString(): rapidjson PrettyWriter (4-space indent) for messages."""
    return json.dumps(value, indent=4, ensure_ascii=False)


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def signature_name_of(doc: dict[str, Any]) -> str:
    """FillSignature(): optional, must be a string."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {to_text(doc)} not formatted correctly. "
            "'signature_name' key must be a string value.")
    return name


def predict_inputs(doc: dict[str, Any], signature: SignatureDef) -> tuple[Arrays, bool]:
    """FillPredictRequestFromJson(): tensors plus whether the request was row format."""
    infos = {k: v.dtype for k, v in signature.inputs.items()}
    if not infos:
        raise invalid_argument("Failed to get input map for signature: "
                               f"{doc.get('signature_name') or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {to_text(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(
                f"JSON Value: {to_text(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {to_text(doc)} No values in 'instances' array")
        return _from_instances(instances, infos), True
    if has_inputs:
        return _from_inputs(doc["inputs"], infos), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


@dataclass
class _Column:
    """One named input being assembled from the rows of `instances`."""

    dtype: int
    shape: tuple[int, ...] | None = None
    values: list | None = None


def _from_instances(instances: list, infos: dict[str, int]) -> Arrays:
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map")
    objects = _is_element_object(instances[0])
    columns: dict[str, _Column] = {}
    for index, element in enumerate(instances):
        if objects:
            _add_object_row(index, element, infos, columns)
        else:
            if _is_element_object(element):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list")
            name = sorted(infos)[0]
            try:
                _add_item(element, name, infos, columns)
            except ServingError as exc:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' "
                                       f"list. Error: {exc}") from exc
    return {name: _finish(col, (len(instances),) + col.shape) for name, col in columns.items()}


def _add_object_row(index: int, element: Any, infos: dict[str, int],
                    columns: dict[str, _Column]) -> None:
    if not _is_element_object(element):
        raise invalid_argument(f"Expecting object but got list at item {index} of input list")
    for name, value in element.items():
        try:
            _add_item(value, name, infos, columns)
        except ServingError as exc:
            raise invalid_argument(f"Failed to process element: {index} key: {name} of "
                                   f"'instances' list. Error: {exc}") from exc
    if set(element) != set(infos):
        raise invalid_argument(
            f"Failed to process element: {index} of 'instances' list. JSON object: "
            f"{to_text(element)} keys must be equal to: {','.join(sorted(infos))}")


def _add_item(value: Any, name: str, infos: dict[str, int], columns: dict[str, _Column]) -> None:
    """AddInstanceItem(): every row of one input must have the same shape."""
    if name not in infos:
        raise invalid_argument(f"JSON object: does not have named input: {name}")
    shape = _dense_shape(value)
    flat: list = []
    _fill(value, 0, shape, infos[name], flat)
    column = columns.setdefault(name, _Column(dtype=infos[name]))
    if column.shape is None:
        column.shape, column.values = shape, flat
        return
    if _size(column.shape) != len(flat):
        raise invalid_argument(f"Expecting tensor size: {_size(column.shape)} but got: {len(flat)}")
    if column.shape != shape:
        raise invalid_argument(f"Expecting shape {_shape_text(column.shape)} but got: "
                               f"{_shape_text(shape)}")
    column.values.extend(flat)


def _from_inputs(value: Any, infos: dict[str, int]) -> Arrays:
    """FillTensorMapFromInputsMap(): one value/list, or an object of named inputs."""
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map")
        name = sorted(infos)[0]
        return {name: _tensor(value, infos[name])}
    arrays: Arrays = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _tensor(value[name], infos[name])
    return arrays


def _tensor(value: Any, dtype: int) -> np.ndarray:
    shape = _dense_shape(value)
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    return _finish(_Column(dtype, shape, flat), shape)


def _dense_shape(value: Any) -> tuple[int, ...]:
    """GetDenseTensorShape(): follow the first element down."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _fill(value: Any, level: int, shape: tuple[int, ...], dtype: int, out: list) -> None:
    """FillTensorProto(): check nesting, sizes and every leaf's type."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {to_text(value)} found at incorrect level: "
                                   f"{level + 1} in the JSON DOM. Expected at level: {rank}")
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(_decode_b64(value))
        else:
            out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                               f"{level} expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _decode_b64(value: dict) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(
            f"JSON Value: {to_text(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        # absl::Base64Unescape also accepts the URL-safe alphabet.
        try:
            return base64.urlsafe_b64decode(value["b64"] + "=" * (-len(value["b64"]) % 4))
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from exc


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {to_text(value)} Type: {_json_type(value)} is not "
                            f"of expected type: {dtype_name(dtype)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _leaf(value: Any, dtype: int) -> Any:
    """AddValueToTensor(): strict per-dtype checks (no silent casts)."""
    if dtype in FLOAT_LIKE:
        _, digits, max_value, target = FLOAT_LIKE[dtype]
        if not _is_number(value):
            raise _type_error(value, dtype)
        if not _lossless(value, digits, max_value):
            raise invalid_argument(f"Cannot convert JSON value: {to_text(value)} to {target} "
                                   "without loss of precision.")
        return value
    if dtype in INT32_LIKE:
        _, low, high = INT32_LIKE[dtype]
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise unimplemented(f"Conversion of JSON Value: {to_text(value)} to type: {dtype_name(dtype)}")


def _lossless(value: float | int, digits: int, max_value: float) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if isinstance(value, int):
        return abs(value) <= (1 << digits) - 1
    return -max_value <= value <= max_value


def _finish(column: _Column, shape: tuple[int, ...]) -> np.ndarray:
    if column.dtype == types_pb2.DT_STRING:
        array = np.empty(len(column.values), dtype=object)
        array[:] = column.values
        return array.reshape(shape)
    np_type = (FLOAT_LIKE.get(column.dtype) or INT32_LIKE.get(column.dtype)
               or (np.bool_,))[0]
    return np.array(column.values, dtype=np_type).reshape(shape)


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# --- rendering ----------------------------------------------------------------------------

def render_predict(outputs: Arrays, row_format: bool) -> str:
    """MakeJsonFromTensors(): `predictions` (row) or `outputs` (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    return _render_rows(outputs) if row_format else _render_columns(outputs)


def _render_rows(outputs: Arrays) -> str:
    batch = -1
    for name, array in outputs.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                   f"{array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    items = []
    for row in range(batch):
        if len(outputs) > 1:
            fields = ", ".join(f"{json.dumps(name)}: {_value(array[row], name)}"
                               for name, array in outputs.items())
            items.append("{" + fields + "}")
        else:
            name, array = next(iter(outputs.items()))
            items.append(_value(array[row], name))
    return '{\n    "predictions": [' + ",\n        ".join(items) + "\n    ]\n}"


def _render_columns(outputs: Arrays) -> str:
    if len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        body = _value(array, name)
    else:
        body = "{" + ", ".join(f"{json.dumps(n)}: {_value(a, n)}" for n, a in outputs.items()) + "}"
    return '{\n    "outputs": ' + body + "\n}"


def _value(array: np.ndarray, name: str) -> str:
    """AddTensorValues(): nested lists, scalars unwrapped."""
    array = np.asarray(array)
    as_bytes = array.dtype.kind in ("O", "S") and name.endswith("_bytes")
    return _render(array, _scalar_writer(array.dtype, as_bytes))


def _render(array: np.ndarray, write: Callable[[Any], str]) -> str:
    if array.ndim == 0:
        return write(array.item() if array.dtype.kind != "O" else array[()])
    if array.ndim == 1:
        return "[" + ", ".join(write(v) for v in array.tolist()) + "]"
    return "[" + ", ".join(_render(sub, write) for sub in array) + "]"


def _scalar_writer(dtype: np.dtype, as_bytes: bool) -> Callable[[Any], str]:
    if dtype.kind == "f":
        digits = 9 if dtype.itemsize <= 4 else 17
        return lambda v: write_decimal(float(v), digits, dtype.itemsize <= 4)
    if dtype.kind == "b":
        return lambda v: "true" if v else "false"
    if dtype.kind in ("i", "u"):
        return lambda v: str(int(v))
    if as_bytes:
        return lambda v: '{"b64": "' + base64.b64encode(_bytes(v)).decode("ascii") + '"}'
    return lambda v: json.dumps(_bytes(v).decode("utf-8", "replace"), ensure_ascii=False)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def write_decimal(value: float, max_digits: int, is_float32: bool) -> str:
    """WriteDecimal(): %g, or full precision if that does not round-trip; add '.0'."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    parsed = float(np.float32(text)) if is_float32 else float(text)
    if parsed != value:
        text = f"{value:.{max_digits}g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def render_error(message: str) -> str:
    return json.dumps({"error": message}, indent=4, ensure_ascii=False)


# --- classify / regress -----------------------------------------------------------------

def example_input(doc: dict[str, Any], method: str) -> input_pb2.Input:
    """FillClassifyRegressRequestFromJson(): `examples` (+ optional `context`)."""
    request_input = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        _example_from_json(doc["context"],
                           request_input.example_list_with_context.context)
    if "examples" not in doc:
        raise invalid_argument(f"JSON Value: {to_text(doc)} When method is {method}, key "
                               "'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(
            f"JSON Value: {to_text(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {to_text(doc)} 'examples' value is an empty array")
    target = (request_input.example_list_with_context.examples if has_context
              else request_input.example_list.examples)
    for value in examples:
        _example_from_json(value, target.add())
    return request_input


def _example_from_json(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in (content if isinstance(content, list) else [content]):
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    kind = feature.WhichOneof("kind")

    def require(expected: str) -> None:
        if kind not in (None, expected):
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                                   f"{kind.split('_')[0]}")

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                               f"{_json_type(value)}")
    if isinstance(value, bool):
        require("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        require("bytes_list")
        feature.bytes_list.value.append(_decode_b64(value))
    elif isinstance(value, str):
        require("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float):
        require("float_list")
        if not _lossless(value, 24, FLOAT_LIKE[types_pb2.DT_FLOAT][2]):
            raise invalid_argument(f"Cannot convert JSON value: {to_text(value)} to float "
                                   "without loss of precision.")
        feature.float_list.value.append(value)
    else:
        require("int64_list")
        if value > 2**63 - 1:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(value)


def render_classification(result: classification_pb2.ClassificationResult) -> str:
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for group in result.classifications:
        pairs = ", ".join(f"[{json.dumps(c.label, ensure_ascii=False)}, "
                          f"{write_decimal(c.score, 9, True)}]" for c in group.classes)
        rows.append("[" + pairs + "]")
    return '{\n    "results": [' + ",\n        ".join(rows) + "\n    ]\n}"


def render_regression(result: regression_pb2.RegressionResult) -> str:
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    values = ", ".join(write_decimal(r.value, 9, True) for r in result.regressions)
    return '{\n    "results": [' + values + "]\n}"
