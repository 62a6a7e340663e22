"""Predict / Classify / Regress on a loaded servable, with TF Serving's checks.

The order of checks and their wording follow predict_util.cc, classifier.cc and
regressor.cc, so a client sees the same code and message from either server.
gRPC, REST and warmup all go through here.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from .errors import failed_precondition, internal, invalid_argument
from .servable import Arrays, Servable, SignatureDef, dtype_name

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def signature_key(name: str) -> str:
    return name or DEFAULT_SIGNATURE


def find_signature(servable: Servable, name: str) -> SignatureDef:
    """Predict's lookup: an unknown key is FAILED_PRECONDITION (predict_util.cc)."""
    key = signature_key(name)
    signature = servable.signature_defs.get(key)
    if signature is None:
        raise failed_precondition(f'Serving signature key "{key}" not found.')
    return signature


def array_dtype(array: np.ndarray) -> int:
    """The DataType enum a numpy array carries (object/bytes arrays are DT_STRING)."""
    if array.dtype.kind in ("O", "S", "U"):
        return types_pb2.DT_STRING
    return tf.as_dtype(array.dtype).as_datatype_enum


def predict(servable: Servable, signature_name: str, inputs: Arrays,
            output_filter: list[str] | tuple[str, ...] = ()) -> Arrays:
    """Validate a predict request against the signature, run it, filter outputs."""
    signature = find_signature(servable, signature_name)
    _verify_method(signature)
    _verify_inputs_size(signature, inputs)
    _verify_inputs(signature, inputs)
    aliases = _output_aliases(signature, output_filter)
    outputs = servable.run(signature_key(signature_name), inputs)
    missing = [a for a in aliases if a not in outputs]
    if missing:
        raise internal("Predict internal error")
    return {alias: outputs[alias] for alias in aliases}


def _verify_method(signature: SignatureDef) -> None:
    if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise internal(
            f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
            f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}")


def _verify_inputs_size(signature: SignatureDef, inputs: Arrays) -> None:
    if len(inputs) == len(signature.inputs):
        return
    sent, wanted = set(inputs), set(signature.inputs)
    raise invalid_argument(
        f"input size does not match signature: {len(inputs)}!={len(signature.inputs)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
        f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
        f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")


def _verify_inputs(signature: SignatureDef, inputs: Arrays) -> None:
    for index, alias in enumerate(sorted(inputs)):
        info = signature.inputs.get(alias)
        if info is None:
            raise invalid_argument(
                f"input tensor alias not found in signature: {alias}. Inputs expected to be "
                f"in the set {{{','.join(sorted(signature.inputs))}}}.")
        got = array_dtype(inputs[alias])
        if got != info.dtype:
            # TensorFlow's FunctionCallFrame wording: what a session reports to TF Serving.
            raise invalid_argument(
                f"Expects arg[{index}] to be {dtype_name(info.dtype)} but "
                f"{dtype_name(got)} is provided")
        _verify_shape(alias, inputs[alias].shape, info.tensor_shape)


def _verify_shape(alias: str, shape: tuple[int, ...],
                  expected: tensor_shape_pb2.TensorShapeProto) -> None:
    if expected.unknown_rank:
        return
    dims = [d.size for d in expected.dim]
    compatible = len(dims) == len(shape) and all(
        want < 0 or want == got for want, got in zip(dims, shape))
    if not compatible:
        want_text = "[" + ",".join("?" if d < 0 else str(d) for d in dims) + "]"
        got_text = "[" + ",".join(str(d) for d in shape) + "]"
        raise invalid_argument(
            f"Input {alias} has shape {got_text}, which is incompatible with the "
            f"signature's shape {want_text}")


def _output_aliases(signature: SignatureDef, output_filter) -> list[str]:
    if not output_filter:
        return sorted(signature.outputs)
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to "
                f"be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


# --- Classify / Regress -------------------------------------------------------------

def _example_signature(servable: Servable, name: str, method: str, kind: str,
                       method_check: bool) -> SignatureDef:
    """Get{Classification,Regression}SignatureDef(): the method name is only checked
    with --enable_signature_method_name_check (off by default, for native TF2 models)."""
    key = signature_key(name)
    signature = servable.signature_defs.get(key)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {key}")
    if method_check and signature.method_name != method:
        raise invalid_argument(
            f"Expected {kind} signature method_name to be {method}. "
            f"Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    return signature


def _debug_string(signature: SignatureDef) -> str:
    return str(signature)  # text format, like the C++ DebugString()


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """InputToSerializedExampleTensor(): one serialized Example per row."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        rows = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = request_input.example_list_with_context.context.SerializeToString()
        # Same trick as TF Serving: Example fields merge when concatenated.
        rows = [ctx + e.SerializeToString()
                for e in request_input.example_list_with_context.examples]
    else:
        rows = []
    if not rows:
        raise invalid_argument("Input is empty.")
    return np.array(rows, dtype=object)


def classify(servable: Servable, signature_name: str, request_input: input_pb2.Input,
             method_check: bool = False) -> classification_pb2.ClassificationResult:
    """PreProcessClassification() + RunClassification() + PostProcessClassificationResult()."""
    signature = _example_signature(servable, signature_name, CLASSIFY_METHOD,
                                   "classification", method_check)
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise failed_precondition(
            f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise failed_precondition(
            'Expected classification signature outputs to contain at least one of '
            f'"classes" or "scores". Signature was: {_debug_string(signature)}')
    examples = serialized_examples(request_input)
    outputs = servable.run(signature_key(signature_name), {"inputs": examples})
    classes, scores = outputs.get("classes"), outputs.get("scores")
    result = classification_pb2.ClassificationResult()
    num_classes = (classes if classes is not None else scores).shape[1]
    for row in range(len(examples)):
        group = result.classifications.add()
        for col in range(num_classes):
            item = group.classes.add()
            if classes is not None:
                item.label = _as_text(classes[row, col])
            if scores is not None:
                item.score = float(scores[row, col])
    return result


def regress(servable: Servable, signature_name: str, request_input: input_pb2.Input,
            method_check: bool = False) -> regression_pb2.RegressionResult:
    """PreProcessRegression() + run + PostProcessRegressionResult()."""
    signature = _example_signature(servable, signature_name, REGRESS_METHOD, "regression",
                                   method_check)
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid_argument(
            f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
    if "outputs" not in signature.outputs:
        raise invalid_argument(
            f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
    examples = serialized_examples(request_input)
    values = servable.run(signature_key(signature_name), {"inputs": examples})["outputs"]
    result = regression_pb2.RegressionResult()
    for value in np.asarray(values).reshape(len(examples), -1)[:, 0]:
        result.regressions.add().value = float(value)
    return result


def _as_text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
