"""models.config handling: parse, build, validate (ServerCore's rules).

Only `model_config_list` is supported, as in HandleReloadConfigRequest. The
validation messages are ServerCore's (server_core.cc), word for word.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import message, text_format
from tensorflow_serving.config import model_server_config_pb2 as msc

from .errors import ServingError, failed_precondition, invalid_argument, Code

TENSORFLOW_PLATFORM = "tensorflow"

ModelServerConfig = msc.ModelServerConfig
ModelConfig = msc.ModelConfig


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model should be served."""

    kind: str  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: frozenset[int] = field(default_factory=frozenset)

    def select(self, available_on_disk: set[int]) -> set[int]:
        if self.kind == "all":
            return set(available_on_disk)
        if self.kind == "specific":
            return set(available_on_disk) & set(self.versions)
        return set(sorted(available_on_disk)[-self.num_versions:]) if available_on_disk else set()


def version_policy(config: ModelConfig) -> VersionPolicy:
    policy = config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy("all")
    if which == "specific":
        return VersionPolicy("specific", versions=frozenset(policy.specific.versions))
    num = policy.latest.num_versions if which == "latest" else 0
    # ServableVersionPolicy.Latest: num_versions <= 0 means 1.
    return VersionPolicy("latest", num_versions=max(1, num))


Message = TypeVar("Message", bound=message.Message)


def parse_text_proto(text: str, message: Message, source: str = "<string>") -> Message:
    """ParseProtoTextFile(): TF Serving's message, plus the parser's own words on where."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise invalid_argument(f"Invalid protobuf file: '{source}': {exc}") from exc
    return message


def read_text_proto(path: str, message: Message) -> Message:
    """Read a text-proto file, failing the way TF Serving does."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError as exc:
        raise ServingError(Code.NOT_FOUND, f"{path}; No such file or directory") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"Cannot read {path}: {exc}") from exc
    return parse_text_proto(text, message, path)


def read_file(path: str) -> ModelServerConfig:
    """Read a text-proto ModelServerConfig."""
    return read_text_proto(path, ModelServerConfig())


def single_model(name: str, base_path: str) -> ModelServerConfig:
    """What --model_name/--model_base_path mean (BuildSingleModelConfig in main.cc)."""
    config = ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = base_path
    entry.model_platform = TENSORFLOW_PLATFORM
    return config


def platform_of(config: ModelConfig) -> str:
    if config.model_type != 0:  # deprecated ModelType enum
        if config.model_platform:
            raise invalid_argument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) "
                "and ModelServerConfig::model_platform.")
        if config.model_type == 1:
            return TENSORFLOW_PLATFORM
        raise invalid_argument(
            f"ModelServerConfig::model_type choice {config.model_type} not supported.")
    if not config.model_platform:
        raise invalid_argument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) "
            "nor ModelServerConfig::model_platform.")
    return config.model_platform


def _is_relative(uri: str) -> bool:
    return "://" not in uri and not os.path.isabs(uri)


def validate_transition(old: ModelServerConfig | None, new: ModelServerConfig) -> None:
    """ServerCore::ReloadConfig's checks before it stores the new config."""
    first = old is None or old.WhichOneof("config") is None
    if not first and new.WhichOneof("config") != "model_config_list":
        raise failed_precondition(
            "Cannot transition to requested config. It is only legal to transition "
            "from one ModelConfigList to another.")
    if new.WhichOneof("config") == "custom_model_config":
        raise invalid_argument("Invalid ServerModelConfig")
    entries = list(new.model_config_list.config)
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise invalid_argument(
                f"Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
    for entry in entries:
        if _is_relative(entry.base_path):
            raise invalid_argument(
                f"Expected model {entry.name} to have an absolute path or URI; "
                f"got base_path()={entry.base_path}")
    if old is not None:
        _validate_platforms(old, new)


def _validate_platforms(old: ModelServerConfig, new: ModelServerConfig) -> None:
    old_platforms = {c.name: platform_of(c) for c in old.model_config_list.config}
    for entry in new.model_config_list.config:
        if entry.name not in old_platforms:
            continue
        new_platform = platform_of(entry)
        if new_platform != old_platforms[entry.name]:
            raise invalid_argument(
                f"Illegal to change a model's platform. For model {entry.name} platform "
                f"was {old_platforms[entry.name]} and new platform requested is {new_platform}")


def check_platform_supported(entry: ModelConfig) -> None:
    platform = platform_of(entry)
    if platform != TENSORFLOW_PLATFORM:
        raise invalid_argument(
            f"Model {entry.name} requests unsupported platform {platform}")
