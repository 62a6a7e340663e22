"""Wires the manager to the gRPC and REST front ends and the config-file poller."""
from __future__ import annotations

import logging
import threading

from . import batching, batching_params, config as cfg, grpc_service, monitoring, rest, servable, warmup
from .errors import ServingError
from .flags import Flags
from .manager import ManagerOptions, ModelManager

log = logging.getLogger(__name__)


class StartupError(Exception):
    pass


def initial_config(flags: Flags) -> cfg.ModelServerConfig:
    """main.cc: --model_config_file wins; else --model_name/--model_base_path."""
    if flags.model_config_file:
        return cfg.read_file(flags.model_config_file)
    if not flags.model_base_path:
        raise StartupError("Both server_options.model_base_path and "
                           "server_options.model_config_file are empty!")
    return cfg.single_model(flags.model_name, flags.model_base_path)


def build_manager(flags: Flags, scheduler: batching.BatchScheduler | None = None) -> ModelManager:
    """The manager, loading versions wrapped for batching when a scheduler is given."""
    options = ManagerOptions(
        prefer_tflite=flags.prefer_tflite_model,
        enable_warmup=flags.enable_model_warmup,
        allow_labels_for_unavailable=flags.allow_version_labels_for_unavailable_models,
        file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
        max_num_load_retries=max(0, flags.max_num_load_retries),
        load_retry_interval_seconds=flags.load_retry_interval_micros / 1e6,
        signature_method_name_check=flags.enable_signature_method_name_check)
    def run_warmup(loaded: servable.Servable, version_dir: str) -> None:
        warmup.run_warmup(loaded, version_dir, options.signature_method_name_check)

    loader = servable.load if scheduler is None else batching.batching_loader(servable.load, scheduler)
    return ModelManager(options, loader=loader, warmup=run_warmup)


class ModelServer:
    def __init__(self, flags: Flags) -> None:
        self.flags = flags
        self.metrics = monitoring.ServingMetrics()
        self.manager: ModelManager | None = None
        self.scheduler: batching.BatchScheduler | None = None
        self._stop = threading.Event()
        self._grpc = None
        self._rest = None

    def start(self) -> tuple[int, int | None]:
        """Read the side files, load the initial models (blocking, as TF Serving does), then
        bind ports."""
        if self.flags.grpc_max_threads < 1:
            raise StartupError(f"Failed to start server. Error: --grpc_max_threads must be positive; "
                               f"was {self.flags.grpc_max_threads}")
        try:
            monitoring_config = (monitoring.read_config(self.flags.monitoring_config_file)
                                 if self.flags.monitoring_config_file else monitoring.MonitoringConfig())
            batching_options = batching_params.options_from_flags(self.flags.enable_batching,
                                                                  self.flags.batching_parameters_file)
            if batching_options is not None:
                log.info("Batching enabled: %s", batching_options)
                self.scheduler = batching.BatchScheduler(batching_options, self.metrics)
            self.manager = build_manager(self.flags, self.scheduler)
            self.manager.reload_config(initial_config(self.flags))
        except (monitoring.MonitoringConfigError, ServingError) as exc:
            raise StartupError(f"Failed to start server. Error: {exc}") from exc
        self.manager.start_polling()
        self._start_config_poller()
        self._grpc, grpc_port = grpc_service.create_server(self.manager, self.flags.port, metrics=self.metrics,
                                                           workers=self.flags.grpc_max_threads)
        self._grpc.start()
        log.info("Running gRPC ModelServer at 0.0.0.0:%d ...", grpc_port)
        rest_port = None
        if self.flags.rest_api_port:
            metrics_path = monitoring_config.path if monitoring_config.enable else None
            self._rest, rest_port = rest.create_server(self.manager, self.flags.rest_api_port, metrics=self.metrics,
                                                       metrics_path=metrics_path)
            rest.serve_in_background(self._rest)
            log.info("Exporting HTTP/REST API at:localhost:%d ...", rest_port)
        return grpc_port, rest_port

    def _start_config_poller(self) -> None:
        wait = self.flags.model_config_file_poll_wait_seconds
        if not self.flags.model_config_file or wait <= 0:
            return
        thread = threading.Thread(target=self._poll_config, args=(wait,), name="config-poll",
                                  daemon=True)
        thread.start()

    def _poll_config(self, wait: float) -> None:
        # TF Serving re-reads the file and calls ReloadConfig every period, unconditionally.
        while not self._stop.wait(wait):
            try:
                self.manager.reload_config(cfg.read_file(self.flags.model_config_file))
            except ServingError as exc:
                log.error("Failed to reload model config file %s: %s",
                          self.flags.model_config_file, exc)

    def wait(self) -> None:
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        if self.manager is not None:
            self.manager.stop()
        if self._rest is not None:
            self._rest.shutdown()
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
        if self.scheduler is not None:
            self.scheduler.stop()
