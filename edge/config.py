"""The edge runtime's one configuration object.

Sources, strongest first: explicit overrides (what the CLI maps onto the config), environment
variables ``LINEWATCH_EDGE_<SECTION>__<KEY>``, the TOML file, then the defaults below. Everything is
validated before anything starts, so a typo stops the box at boot with a message that names the key
instead of failing at 3 a.m. when the code path is first hit.

The MQTT password is deliberately accepted only from the environment
(``LINEWATCH_EDGE_MQTT__PASSWORD``) or from ``mqtt.password_file``: never from the TOML file (it gets
copied around) nor from the command line (it shows in ``ps``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from linewatch.contract.config_loader import LayeredSettings, load_settings
from linewatch.contract.errors import ConfigError

ENV_PREFIX = "LINEWATCH_EDGE_"
BACKEND_NAMES = ("tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu", "openvino")
# OpenVINO is opt-in (`order = ["openvino", "ort-cpu"]` on an Intel box): a box with the package
# installed keeps its tried order until its config says otherwise.
DEFAULT_BACKEND_ORDER = ("tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu")
FullPolicy = Literal["drop_oldest", "drop_newest", "block"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsConfig(_Section):
    """Client TLS. ``ca`` alone gives server authentication; ``cert``+``key`` add client authentication."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False  # skip hostname check (self-signed test brokers only)

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        return self


class MqttConfig(_Section):
    """Broker connection. ``url`` is ``mqtt://host:port`` or ``mqtts://host:port`` (TLS)."""

    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = None  # default: linewatch-edge-<camera>
    keepalive_s: int = Field(30, ge=5, le=3600)  # a dead network is noticed within 1.5x this
    tls: TlsConfig = TlsConfig()
    username: str | None = None
    password: SecretStr | None = None  # environment only (see module docstring)
    password_file: Path | None = None
    reconnect_min_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    inflight_window: int = Field(200, ge=1, le=65000)  # unacknowledged QoS1 messages handed to the socket
    payload: Literal["json", "sparkplug"] = "json"  # sparkplug: Sparkplug B 3.0, see [sparkplug]

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parsed.hostname:
            raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port], got {value!r}")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise ValueError(f"bad port in {value!r}")
        return value

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def use_tls(self) -> bool:
        return urlparse(self.url).scheme in ("mqtts", "ssl") or self.tls.ca is not None

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (8883 if self.use_tls else 1883)

    def resolved_password(self) -> str | None:
        """The password from the environment, else the first line of ``password_file``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
        return None


_SPARKPLUG_ID = r"^[^/+#\s]{1,64}$"


class SparkplugConfig(_Section):
    """Sparkplug B mode (``mqtt.payload = "sparkplug"``): ``spBv1.0/<group_id>/.../<edge_node_id>/<camera>``.

    ``qos`` 1 (default) lets the broker's PUBACK delete a verdict from the outbox, which is the no-loss
    guarantee; Sparkplug 3.0 asks QoS 0 for births and data, which ``qos = 0`` gives, at the price of
    verdicts lost in an outage. ``rebirth_min_interval_s`` bounds how often births go out on
    ``Node Control/Rebirth`` (a storm of requests is merged).
    """

    group_id: str = Field("linewatch", pattern=_SPARKPLUG_ID)
    edge_node_id: str | None = Field(None, pattern=_SPARKPLUG_ID)  # default: the host name
    qos: Literal[0, 1] = 1
    heatmap: bool = False  # the overlay JPEG of anomalous frames as the Inspection/Heatmap bytes metric
    rebirth_min_interval_s: float = Field(1.0, ge=0, le=3600)


class TopicConfig(_Section):
    """Topic root ``<root>`` = ``template`` formatted with prefix/site/line/station/camera."""

    template: str = "{prefix}/{site}/{line}/{station}/{camera}"
    prefix: str = "linewatch"
    site: str = "site"
    line: str = "line"
    station: str = "station"

    @field_validator("template", "prefix", "site", "line", "station")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError(f"{value!r} is not a valid MQTT topic part")
        return value

    @field_validator("template")
    @classmethod
    def _has_camera(cls, value: str) -> str:
        if "{camera}" not in value:
            raise ValueError("the topic template must contain {camera} so that cameras do not collide")
        return value

    def root(self, camera: str) -> str:
        return self.template.format(
            prefix=self.prefix, site=self.site, line=self.line, station=self.station, camera=camera
        )


class PublishConfig(_Section):
    """What goes to ``<root>/result``: every frame, or anomalies plus a periodic summary."""

    mode: Literal["every_frame", "anomalies"] = "every_frame"
    summary_period_s: float = Field(10.0, gt=0)
    threshold: float = Field(0.5, gt=0, lt=1)  # decision threshold on the normalised score and map
    heatmap: bool = True
    heatmap_quality: int = Field(80, ge=10, le=100)
    heatmap_alpha: float = Field(0.45, ge=0, le=1)
    min_region_area: int = Field(1, ge=1)  # model pixels; smaller blobs are noise


class QueueConfig(_Section):
    """Bounded hand-offs between stages. Live cameras drop; files and folders wait (they are not live)."""

    frames: int = Field(4, ge=1, le=10000)
    results: int = Field(64, ge=1, le=100000)
    policy: FullPolicy = "drop_oldest"  # frame queue of live sources
    offline_policy: FullPolicy = "block"  # frame queue of video files and dir: sources
    results_policy: FullPolicy = "block"  # a computed verdict is never dropped by default


class BackendConfig(_Section):
    """Inference backends, tried in order; unavailable ones are skipped with a logged reason."""

    order: list[str] = Field(default_factory=lambda: list(DEFAULT_BACKEND_ORDER))
    threads: int = Field(0, ge=0, le=256)  # onnxruntime intra-op threads, 0 = its default
    allow_spinning: bool = (
        False  # onnxruntime pool threads spin-wait: faster alone, steals CPU from other stages
    )
    precision: Literal["fp32", "fp16", "int8"] = "fp16"  # TensorRT engines built on the box
    workspace_mb: int = Field(1024, ge=16)
    warmup_runs: int = Field(2, ge=0, le=100)
    openvino_device: str = "CPU"  # OpenVINO device for the `openvino` backend: CPU, GPU (iGPU), AUTO

    @field_validator("order")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v not in BACKEND_NAMES]
        if bad or not value:
            raise ValueError(f"unknown backend(s) {bad}; choose from {list(BACKEND_NAMES)}")
        return value


class BatchConfig(_Section):
    """Micro-batching across cameras: up to ``size`` frames, waiting at most ``max_wait_ms`` to fill."""

    size: int = Field(1, ge=1, le=64)
    max_wait_ms: float = Field(2.0, ge=0, le=1000)


class OutboxConfig(_Section):
    """The on-disk store of results not yet acknowledged by the broker."""

    path: Path = Path("linewatch-outbox.sqlite")
    max_rows: int = Field(100_000, ge=10)
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"  # FULL survives power loss, costs an fsync
    drain_timeout_s: float = Field(10.0, ge=0)  # graceful shutdown: wait this long for acks


class MetricsConfig(_Section):
    """Prometheus + ``/healthz`` HTTP port (None = off, 0 = any free port) and the metrics-topic period."""

    port: int | None = Field(9108, ge=0, le=65535)
    host: str = "0.0.0.0"
    period_s: float = Field(10.0, gt=0)
    window: int = Field(2048, ge=16)  # latency samples kept for p50/p99


class ReloadConfig(_Section):
    """Bundle store watching and verification of new bundles."""

    watch_interval_s: float = Field(1.0, gt=0)
    key: Path | None = None  # public key (Ed25519) or HMAC secret; when set, unsigned bundles are refused
    require_signature: bool = False
    # Box keys allowed to sign bank-only bundles (onboarded parts) on a base signed by `key`; explicit only.
    box_keys: list[Path] = Field(default_factory=list)


class OnboardConfig(_Section):
    """Onboarding a part on the box (``onboard``, ``cmd/onboard``): the box's own signing key and limits."""

    key: Path | None = None  # this box's private key; its public half must be in reload.box_keys
    seed: int = 0
    image_root: Path | None = None  # cmd/onboard may name folders under this one only (None: no folders)
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024)


class TriggerConfig(_Section):
    """PLC trigger handshake (edge/handshake.py): which cameras score only on a trigger, and how long a
    trigger waits for its frame and verdict before it counts as missed."""

    cameras: list[str] = Field(default_factory=list)
    timeout_s: float = Field(5.0, gt=0, le=3600)


OpcUaPolicy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]


class OpcUaConfig(_Section):
    """OPC UA server on the box (edge/publish/opcua_server.py; needs linewatch[opcua]).

    Anonymous sessions are off unless ``allow_anonymous`` (then read-only); users come from
    ``users_file`` (``name:operator|viewer:password`` lines, keep it mode 0600). Secure policies need
    ``certificate`` and ``private_key``; ``None`` is for a closed network.
    """

    enabled: bool = False
    endpoint: str = "opc.tcp://0.0.0.0:4840/linewatch/"
    namespace: str = "urn:linewatch:edge"
    security_policies: list[OpcUaPolicy] = Field(default_factory=lambda: ["Basic256Sha256_SignAndEncrypt"])
    certificate: Path | None = None
    private_key: Path | None = None
    users_file: Path | None = None
    allow_anonymous: bool = False
    write_timeout_s: float = Field(0.5, gt=0, le=10)  # the verdict waits this long for the server

    @model_validator(mode="after")
    def _secure_needs_keys(self) -> OpcUaConfig:
        if not self.security_policies:
            raise ValueError("security_policies: at least one")
        secure = any(p != "None" for p in self.security_policies)
        if self.enabled and secure and not (self.certificate and self.private_key):
            raise ValueError("secure security_policies need certificate and private_key")
        if self.enabled and not self.allow_anonymous and self.users_file is None:
            raise ValueError("anonymous access is off: give users_file (or allow_anonymous = true)")
        return self


class CameraConfig(_Section):
    """Source behaviour: reopen backoff, stall detection, what a video file does at its end."""

    reopen_min_s: float = Field(0.5, gt=0)
    reopen_max_s: float = Field(30.0, gt=0)
    stall_timeout_s: float = Field(10.0, gt=0)
    at_end: Literal["stop", "loop", "wait"] = "wait"
    dir_poll_s: float = Field(0.2, gt=0)
    dir_settle_s: float = Field(
        0.0, ge=0
    )  # skip files modified more recently than this (still being written)
    realtime: bool = False  # pace video files at their own fps instead of as fast as possible


class LoggingConfig(_Section):
    """Log level and format; ``repeat_every_s``: a repeating event (retry, bad frame) is logged once, then
    summarised at most once per this period (its counters still count every event)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = True
    repeat_every_s: float = Field(60.0, gt=0)


class WatchdogConfig(_Section):
    """systemd ``Type=notify``: READY/STOPPING always when $NOTIFY_SOCKET is set; WATCHDOG when enabled."""

    enabled: bool = True
    stall_s: float = Field(30.0, gt=0)  # stop feeding the watchdog when inference made no progress this long


class OperatorConfig(_Section):
    """The operator page (``/operator`` on the metrics port). Off unless a credential is configured.

    Credentials: ``token`` (with any name at login) or ``username`` + ``password``, both secrets from the
    environment (``LINEWATCH_EDGE_OPERATOR__TOKEN``, ``..._PASSWORD``) or ``*_file``; or a reverse proxy
    that authenticates and names the user in ``proxy_user_header`` (trusted only from ``proxy_from``).
    Feedback files go only under ``drop_dir`` (false alarms, as good images) and ``review_dir`` (missed
    defects); every action is appended to ``audit_log``.
    """

    token: SecretStr | None = None  # environment only
    token_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None  # environment only
    password_file: Path | None = None
    proxy_user_header: str | None = None  # e.g. "X-Remote-User", set by an authenticating proxy
    proxy_from: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    drop_dir: Path | None = None  # the refresh job's drop_dir
    review_dir: Path | None = None  # the refresh job's review_dir
    audit_log: Path = Path("linewatch-operator-audit.jsonl")
    refresh_log: Path | None = None  # the refresh job's log: gate results in the model history
    gallery: int = Field(12, ge=1, le=200)  # last N anomalous frames kept for the page
    feedback_per_minute: int = Field(20, ge=1, le=1000)  # per user
    session_hours: float = Field(12.0, gt=0)
    max_fps: float = Field(4.0, gt=0, le=60)  # live updates pushed to each viewer per second at most

    @staticmethod
    def _secret(value: SecretStr | None, file: Path | None) -> str | None:
        if value is not None:
            return value.get_secret_value() or None
        if file is not None:
            return file.read_text(encoding="utf-8").splitlines()[0].strip() or None
        return None

    def resolved_token(self) -> str | None:
        return self._secret(self.token, self.token_file)

    def resolved_password(self) -> str | None:
        return self._secret(self.password, self.password_file)

    @property
    def configured(self) -> bool:
        """True when some way to log in exists; without one the page refuses every request."""
        return bool(
            self.token is not None
            or self.token_file is not None
            or (self.username and (self.password is not None or self.password_file is not None))
            or self.proxy_user_header
        )


class EdgeConfig(LayeredSettings):
    """Everything the edge runtime can be told. See the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    mqtt: MqttConfig = MqttConfig()
    topic: TopicConfig = TopicConfig()
    sparkplug: SparkplugConfig = SparkplugConfig()
    publish: PublishConfig = PublishConfig()
    queues: QueueConfig = QueueConfig()
    backend: BackendConfig = BackendConfig()
    batch: BatchConfig = BatchConfig()
    outbox: OutboxConfig = OutboxConfig()
    metrics: MetricsConfig = MetricsConfig()
    reload: ReloadConfig = ReloadConfig()
    onboard: OnboardConfig = OnboardConfig()
    camera: CameraConfig = CameraConfig()
    trigger: TriggerConfig = TriggerConfig()
    opcua: OpcUaConfig = OpcUaConfig()
    logging: LoggingConfig = LoggingConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    operator: OperatorConfig = OperatorConfig()


def _refuse_password(values: dict[str, Any], path: Path) -> dict[str, Any]:
    """The file may not hold the MQTT password (see the module docstring)."""
    if isinstance(values.get("mqtt"), dict) and "password" in values["mqtt"]:
        raise ConfigError(
            f"mqtt.password: not allowed in the config file {path}; set {ENV_PREFIX}MQTT__PASSWORD "
            "or mqtt.password_file"
        )
    operator = values.get("operator")
    for key in ("token", "password"):
        if isinstance(operator, dict) and key in operator:
            raise ConfigError(
                f"operator.{key}: not allowed in the config file {path}; set "
                f"{ENV_PREFIX}OPERATOR__{key.upper()} or operator.{key}_file"
            )
    return values


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> EdgeConfig:
    """Build and validate the config (contract/config_loader.py); raise ConfigError naming every bad key."""
    return load_settings(
        EdgeConfig, component="edge", path=path, overrides=overrides, prepare=_refuse_password
    )
