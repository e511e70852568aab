"""An OPC UA server on the box (``[opcua]``, asyncua): per-camera variables and the PLC handshake.

Why asyncua: the maintained pure-Python OPC UA stack (server and client), with security policies,
user identity tokens and per-request permission rules; nothing here speaks the protocol by hand.

Address space: ``Objects/Linewatch/<camera>`` holds the verdict of the last frame (``Verdict`` OK/NG,
``Anomalous``, ``Score``, ``FrameId``, ``Regions``), counters, model and status; a triggered camera
also gets ``Handshake`` with its state, the held result, the writable ``Recipe`` / ``TriggerRequest``
/ ``Ack`` variables and the methods ``Trigger(recipe)`` and ``Acknowledge()``. Methods answer a
refused trigger with ``BadInvalidState`` and the reason; a write of the wrong type is refused by
asyncua itself (``BadTypeMismatch``) before anything runs, so nothing changes.

Why the verdict is written synchronously: the postprocess thread waits (at most ``write_timeout_s``)
until the variables hold the verdict, and only then writes it to the MQTT outbox, so an OPC UA client
never lags the MQTT result. Other updates (model, counters, handshake) are fire-and-forget.

Security: ``security_policies`` picks the endpoints (``None`` is for a closed network only; the others
need ``certificate`` and ``private_key``). Users come from ``users_file`` (``name:role:password``
lines, role ``operator`` = may write and call, ``viewer`` = read, browse, subscribe); anonymous
sessions are refused unless ``allow_anonymous`` (then read-only). Nobody may change the address space.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.server.user_managers import UserManager

from linewatch.edge.config import OpcUaConfig
from linewatch.edge.handshake import HandshakeError, TriggerGate
from linewatch.edge.observability.logs import RepeatLimiter

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)

VT = ua.VariantType
CAMERA_VARS: dict[str, tuple[VT, Any]] = {
    "Verdict": (VT.String, ""),  # "OK" / "NG"
    "Anomalous": (VT.Boolean, False),
    "Score": (VT.Double, 0.0),
    "FrameId": (VT.Int64, -1),
    "Regions": (VT.Int32, 0),
    "Frames": (VT.UInt64, 0),
    "Anomalies": (VT.UInt64, 0),
    "Threshold": (VT.Double, 0.0),
    "ModelName": (VT.String, ""),
    "ModelVersion": (VT.Int64, 0),
    "Backend": (VT.String, ""),
    "Status": (VT.String, "starting"),
}
HANDSHAKE_VARS: dict[str, tuple[VT, Any]] = {
    "State": (VT.String, "idle"),
    "ResultsReady": (VT.Boolean, False),
    "OK": (VT.Boolean, False),
    "Regions": (VT.Int32, 0),
    "TriggerId": (VT.UInt64, 0),
    "Missed": (VT.UInt64, 0),
    "Untriggered": (VT.UInt64, 0),
    "Refused": (VT.UInt64, 0),
    "LastError": (VT.String, ""),
}
WRITABLE_VARS: dict[str, tuple[VT, Any]] = {"Recipe": (VT.Int32, 0), "TriggerRequest": (VT.Boolean, False)}
WRITABLE_VARS["Ack"] = (VT.Boolean, False)
_WRITE_OR_CALL = {
    ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary),
    ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary),
}


def read_users(path: Path) -> dict[str, tuple[str, str]]:
    """``name:role:password`` per line (``#`` comments); role is ``operator`` or ``viewer``."""
    users: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[1] not in ("operator", "viewer") or not parts[0] or not parts[2]:
            raise ValueError(f"{path}:{n}: expected name:operator|viewer:password")
        users[parts[0]] = (parts[1], parts[2])
    return users


class Users(UserManager):
    """Password check against the users file; anonymous only when allowed."""

    def __init__(self, users: dict[str, tuple[str, str]], allow_anonymous: bool) -> None:
        self.users, self.allow_anonymous = users, allow_anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None) -> User | None:  # fmt: skip
        if username is None:
            return User(role=UserRole.Anonymous) if self.allow_anonymous else None
        entry = self.users.get(username)
        if entry is None or not hmac.compare_digest(entry[1].encode(), (password or "").encode()):
            limited.warning("OPC UA login refused", "login", user=username)
            return None
        return User(role=UserRole.User, name=username)


class Rules(PermissionRuleset):
    """Operators: the usual user requests; viewers and anonymous: the same less Write and Call."""

    def __init__(self, users: dict[str, tuple[str, str]]) -> None:
        self.operators = {name for name, (role, _) in users.items() if role == "operator"}
        self.user_ids = {ua.NodeId(t) for t in USER_TYPES}

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        if action_type_id not in self.user_ids:
            return False  # nobody changes the address space
        if action_type_id in _WRITE_OR_CALL:
            return user.role == UserRole.User and user.name in self.operators
        return user.role in (UserRole.User, UserRole.Anonymous)


class OpcUaServer:
    """The server in a thread of its own (an asyncio loop); the pipeline pushes values into it."""

    def __init__(self, cfg: OpcUaConfig, cameras: list[Any]) -> None:
        self.cfg, self.cameras = cfg, cameras
        self.users = read_users(cfg.users_file) if cfg.users_file else {}
        self.write_timeouts = 0
        self._late = threading.Event()  # a verdict write timed out and has not completed yet
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opcua", daemon=True)
        self._server: Server | None = None
        self._nodes: dict[str, dict[str, Any]] = {}  # camera -> variable name -> node
        self.endpoint = cfg.endpoint

    # ----- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)
        log.info("OPC UA server running", extra={"endpoint": self.endpoint})

    def stop(self) -> None:
        server, self._server = self._server, None  # pushes from now on are dropped, never waited for
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        cfg = self.cfg
        server = Server(user_manager=Users(self.users, cfg.allow_anonymous))
        await server.init()
        server.set_endpoint(cfg.endpoint)
        server.set_server_name("Linewatch edge")
        if cfg.certificate and cfg.private_key:
            await server.load_certificate(str(cfg.certificate))
            await server.load_private_key(str(cfg.private_key))
        policies = [getattr(ua.SecurityPolicyType, _POLICY[p]) for p in cfg.security_policies]
        server.set_security_policy(policies, permission_ruleset=Rules(self.users))
        tokens: list[type] = [ua.UserNameIdentityToken]
        if cfg.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        idx = await server.register_namespace(cfg.namespace)
        root = await server.nodes.objects.add_folder(idx, "Linewatch")
        for cam in self.cameras:
            await self._add_camera(server, idx, root, cam)
        await server.start()
        self._server = server

    async def _add_camera(self, server: Server, idx: int, root: Any, cam: Any) -> None:
        obj = await root.add_object(idx, cam.name)
        nodes: dict[str, Any] = {}
        for name, (vtype, initial) in CAMERA_VARS.items():
            nodes[name] = await obj.add_variable(idx, name, ua.Variant(initial, vtype))
        gate: TriggerGate | None = cam.gate
        if gate is not None:
            hs = await obj.add_object(idx, "Handshake")
            for name, (vtype, initial) in HANDSHAKE_VARS.items():
                nodes[f"Handshake/{name}"] = await hs.add_variable(idx, name, ua.Variant(initial, vtype))
            for name, (vtype, initial) in WRITABLE_VARS.items():
                node = await hs.add_variable(idx, name, ua.Variant(initial, vtype))
                await node.set_writable()
                nodes[f"Handshake/{name}"] = node
            server.set_attribute_value_setter(
                nodes["Handshake/TriggerRequest"].nodeid, self._on_write(gate, "trigger", nodes)
            )
            server.set_attribute_value_setter(
                nodes["Handshake/Ack"].nodeid, self._on_write(gate, "ack", nodes)
            )
            await hs.add_method(idx, "Trigger", self._method(gate, "trigger", nodes), [VT.Int32], [VT.UInt64])
            await hs.add_method(idx, "Acknowledge", self._method(gate, "ack", nodes), [], [VT.Boolean])
            gate.listeners.append(lambda snap, c=cam.name: self.push(c, handshake_values(snap)))
        self._nodes[cam.name] = nodes

    # ----- PLC writes and calls (on the server's loop) ----------------------------------------
    def _on_write(self, gate: TriggerGate, action: str, nodes: dict[str, Any]) -> Any:
        """TriggerRequest/Ack = true: act, then fall back to false (the PLC sees the outcome in State)."""

        def setter(node_data: Any, attr: Any, value: ua.DataValue) -> None:
            node_data.attributes[attr].value = value
            if value.Value is None or value.Value.Value is not True:
                return
            try:
                if action == "trigger":
                    gate.trigger(int(self._current(nodes["Handshake/Recipe"])), source="opcua")
                else:
                    gate.ack()
            except HandshakeError as exc:
                limited.warning("OPC UA handshake write refused", gate.camera, error=str(exc))
                self.push(gate.camera, {"Handshake/LastError": str(exc)})
            reset = ua.DataValue(ua.Variant(False, VT.Boolean))
            node_data.attributes[attr].value = reset

        return setter

    def _current(self, node: Any) -> Any:
        assert self._server is not None
        return self._server.iserver.aspace.read_attribute_value(
            node.nodeid, ua.AttributeIds.Value
        ).Value.Value

    def _method(self, gate: TriggerGate, action: str, nodes: dict[str, Any]) -> Any:
        async def call(parent: Any, *args: ua.Variant) -> list[ua.Variant]:
            try:
                if action == "trigger":
                    tid = gate.trigger(int(args[0].Value), source="opcua")
                    return [ua.Variant(tid, VT.UInt64)]
                gate.ack()
                return [ua.Variant(True, VT.Boolean)]
            except HandshakeError as exc:
                raise ua.UaStatusCodeError(ua.StatusCodes.BadInvalidState) from exc

        return call

    # ----- values from the pipeline (any thread) -----------------------------------------------
    def push(self, camera: str, values: dict[str, Any], wait: bool = False) -> None:
        """Write ``values`` (variable -> value) of ``camera``; ``wait``: until they are in place."""
        if self._server is None or self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._write(camera, values), self._loop)
        if wait and not self._late.is_set():
            try:
                future.result(self.cfg.write_timeout_s)
            except TimeoutError:
                # a stuck server must not slow the line: stop waiting until a write completes again
                self.write_timeouts += 1
                self._late.set()
                future.add_done_callback(lambda _f: self._late.clear())
                limited.warning("OPC UA update late; not waiting until it catches up", camera, camera=camera)

    async def _write(self, camera: str, values: dict[str, Any]) -> None:
        nodes = self._nodes.get(camera, {})
        for name, value in values.items():
            node = nodes.get(name)
            if node is None or value is None:
                continue
            vtype = _vtype(name)
            await node.write_value(ua.DataValue(ua.Variant(value, vtype)))

    def state(self, cam: Any, model: Any, status: str) -> None:
        """Model, threshold, counters and status (on model changes and every metrics period)."""
        values = {
            "Threshold": float(cam.threshold), "Frames": cam.results, "Anomalies": cam.anomalies,
            "Status": status,
        }  # fmt: skip
        if model is not None:
            values.update(ModelName=model.name, ModelVersion=int(model.version), Backend=model.backend_name)
        self.push(cam.name, values)

    def verdict(self, cam: Any, body: dict[str, Any]) -> None:
        """The postprocess stage's hook: the verdict is in place before the MQTT outbox gets it."""
        values = {
            "Verdict": "NG" if body["anomalous"] else "OK", "Anomalous": body["anomalous"],
            "Score": float(body["score"]), "FrameId": int(body["frame_id"]),
            "Regions": len(body["regions"]), "Frames": cam.results + 1,
            "Anomalies": cam.anomalies + int(body["anomalous"]), "Threshold": float(body["threshold"]),
        }  # fmt: skip
        self.push(cam.name, values, wait=True)


_POLICY = {
    "None": "NoSecurity",
    "Basic256Sha256_Sign": "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt": "Basic256Sha256_SignAndEncrypt",
}


def _vtype(name: str) -> VT:
    if name.startswith("Handshake/"):
        short = name.split("/", 1)[1]
        return (HANDSHAKE_VARS.get(short) or WRITABLE_VARS[short])[0]
    return CAMERA_VARS[name][0]


def handshake_values(snap: dict[str, Any]) -> dict[str, Any]:
    held, counters = snap["result"] or {}, snap["counters"]
    return {
        "Handshake/State": snap["state"], "Handshake/ResultsReady": snap["results_ready"],
        "Handshake/OK": bool(held.get("ok", False)), "Handshake/Regions": int(held.get("regions", 0)),
        "Handshake/TriggerId": snap["trigger_id"], "Handshake/Missed": counters["missed"],
        "Handshake/Untriggered": counters["untriggered"], "Handshake/Refused": counters["refused"],
        "Handshake/LastError": snap["error"] or "",
    }  # fmt: skip
