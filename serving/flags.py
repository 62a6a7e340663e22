"""tensorflow_model_server's command line, so the same command lines work here.

Accepts `--flag=value` and `--flag value`; booleans as `--flag`, `--flag=true/false`.
Flags we accept but do not act on are listed in IGNORED and logged at start.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Flags:
    port: int = 8500
    rest_api_port: int = 0
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    file_system_poll_wait_seconds: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    prefer_tflite_model: bool = False
    enable_model_warmup: bool = True
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    enable_signature_method_name_check: bool = False
    monitoring_config_file: str = ""  # Prometheus metrics on the REST port (serving/monitoring.py)
    enable_batching: bool = False
    batching_parameters_file: str = ""  # text BatchingParameters (serving/batching_params.py)
    grpc_max_threads: int = 16  # gRPC handler threads (TF Serving: 4 x CPUs)


# Real TF Serving flags that only matter on its own runtime (GPU, threads, sessions).
IGNORED = {
    "per_process_gpu_memory_fraction",
    "xla_gpu_compilation_enabled", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "grpc_channel_arguments", "saved_model_tags",
    "platform_config_file", "flush_filesystem_caches", "num_load_threads",
    "num_unload_threads", "model_config_file_root_dir", "enable_model_warmup_batching",
}
BOOL_IGNORED = {"xla_gpu_compilation_enabled", "flush_filesystem_caches"}


class FlagError(ValueError):
    pass


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise FlagError(f"Illegal value '{text}' for boolean flag --{name}")


def parse(argv: list[str]) -> tuple[Flags, dict[str, str]]:
    """Returns the flags and the ignored ones that were given (name -> value)."""
    flags = Flags()
    types = {f.name: f.type for f in fields(Flags)}
    ignored: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise FlagError(f"Unexpected argument '{arg}'")
        name, has_value, value = arg[2:].partition("=")
        is_bool = types.get(name) in (bool, "bool") or name in BOOL_IGNORED
        if not has_value:
            if is_bool:
                # `--flag` alone means true; `--flag false` is accepted too.
                value = args.pop(0) if args and args[0].lower() in ("true", "false") else "true"
            elif args:
                value = args.pop(0)
            else:
                raise FlagError(f"Flag --{name} needs a value")
        if name in IGNORED:
            ignored[name] = value
            continue
        if name not in types:
            raise FlagError(f"Unknown command line flag '{name}'")
        setattr(flags, name, _convert(name, types[name], value))
    return flags, ignored


def _convert(name: str, kind, value: str):
    if kind in (bool, "bool"):
        return _parse_bool(name, value)
    if kind in (int, "int"):
        try:
            return int(value)
        except ValueError:
            raise FlagError(f"Illegal value '{value}' for integer flag --{name}") from None
    return value
