"""The OPC UA server against a real asyncua client on loopback, with the runtime scoring real frames.

Checks: anonymous refused (off by default), a viewer may read but not trigger, the verdict is in the
variables no later than the MQTT result, the handshake by method and by writable variable, and bad
inputs (wrong type, trigger while busy, read-only variable) answered with an error, nothing changed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from edge_testkit import edge_config, make_bundle, wait_for, write_frame

from linewatch.deploy.localbroker import free_port

asyncua = pytest.importorskip("asyncua", reason="the [opcua] extra (asyncua) is not installed")
from asyncua import Client, ua  # noqa: E402
from asyncua.ua.uaerrors import UaStatusCodeError  # noqa: E402

ROOT = "linewatch/site/line/station"


async def connect(url: str, user: str | None = None, password: str | None = None) -> Client:
    client = Client(url, timeout=10)
    if user:
        client.set_user(user)
        client.set_password(password or "")
    await client.connect()
    return client


async def eventually(node: Any, value: Any, timeout: float = 30.0) -> None:
    """The server applies a PLC action, then updates the variables on its loop: poll for the value."""
    for _ in range(int(timeout / 0.05)):
        if await node.read_value() == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node} never became {value!r} (is {await node.read_value()!r})")


async def var(client: Client, *path: str) -> Any:
    ns = await client.get_namespace_index("urn:linewatch:edge")
    return await client.nodes.objects.get_child([f"{ns}:Linewatch", *(f"{ns}:{p}" for p in path)])


def test_opcua_verdicts_handshake_security(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    users = tmp_path / "opcua.users"
    users.write_text("# name:role:password\nplc:operator:s3cret\nhmi:viewer:look\n")
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/linewatch/"
    cfg = edge_config(
        tmp_path, mqtt_broker.url,
        opcua={"enabled": True, "endpoint": url, "security_policies": ["None"], "users_file": str(users),
               "write_timeout_s": 10},  # a loaded CI box: the verdict always waits for the server
        trigger={"cameras": ["trig"], "timeout_s": 30},
    )  # fmt: skip
    free, trig = tmp_path / "free", tmp_path / "trig"
    free.mkdir()
    trig.mkdir()
    rec = mqtt_recorder([f"{ROOT}/free/result"])
    rt = runtime_factory(
        cfg, make_bundle(tmp_path / "toy-v1"), [f"dir:{free}", f"dir:{trig}"], ["free", "trig"]
    )

    seen_at_result: list[tuple[int, int]] = []  # (MQTT frame id, OPC UA FrameId read right then)

    async def scenario() -> None:
        with pytest.raises(UaStatusCodeError):  # anonymous is off
            await connect(url)
        with pytest.raises(UaStatusCodeError):
            await connect(url, "plc", "wrong")
        plc = await connect(url, "plc", "s3cret")
        hmi = await connect(url, "hmi", "look")
        try:
            frame_id = await var(plc, "free", "FrameId")
            assert await (await var(plc, "free", "ModelName")).read_value() == "toy"
            for i in range(4):  # the verdict is in OPC UA no later than on MQTT
                write_frame(free, i, i == 3)
                await asyncio.to_thread(wait_for, lambda i=i: len(rec.on("/result")) > i, 60)
                seen_at_result.append(
                    (json.loads(rec.on("/result")[i])["frame_id"], await frame_id.read_value())
                )
            assert await (await var(plc, "free", "Verdict")).read_value() == "NG"
            assert await (await var(hmi, "free", "Regions")).read_value() >= 1

            hs = await var(plc, "trig", "Handshake")
            state = await var(plc, "trig", "Handshake", "State")
            recipe = await var(plc, "trig", "Handshake", "Recipe")
            with pytest.raises(UaStatusCodeError):  # viewer: read yes, trigger no
                await (await var(hmi, "trig", "Handshake")).call_method(
                    f"{hs.nodeid.NamespaceIndex}:Trigger", ua.Variant(0, ua.VariantType.Int32)
                )
            with pytest.raises(UaStatusCodeError):  # wrong type: refused by the server
                await recipe.write_value(ua.Variant("zero", ua.VariantType.String))
            assert await recipe.read_value() == 0
            with pytest.raises(UaStatusCodeError):  # the verdict is not writable
                await (await var(plc, "trig", "Score")).write_value(ua.Variant(0.0, ua.VariantType.Double))
            ns = hs.nodeid.NamespaceIndex
            tid = await hs.call_method(f"{ns}:Trigger", ua.Variant(0, ua.VariantType.Int32))
            assert tid == 1
            await eventually(state, "armed")
            with pytest.raises(UaStatusCodeError):  # trigger while busy: BadInvalidState, nothing changed
                await hs.call_method(f"{ns}:Trigger", ua.Variant(0, ua.VariantType.Int32))
            assert await state.read_value() == "armed" and rt.by_name["trig"].gate.trigger_id == 1
            write_frame(trig, 0, True)
            ready = await var(plc, "trig", "Handshake", "ResultsReady")
            await eventually(ready, True, 60)
            assert await (await var(plc, "trig", "Handshake", "OK")).read_value() is False
            assert await hs.call_method(f"{ns}:Acknowledge") is True
            await eventually(state, "idle")
            # the same handshake by writable variables, as a PLC without method calls does it
            await (await var(plc, "trig", "Handshake", "TriggerRequest")).write_value(True)
            await eventually(state, "armed")
            write_frame(trig, 1, False)
            await eventually(ready, True, 60)
            assert await (await var(plc, "trig", "Handshake", "OK")).read_value() is True
            await (await var(plc, "trig", "Handshake", "Ack")).write_value(True)
            await eventually(state, "idle")
            await eventually(await var(plc, "trig", "Handshake", "Refused"), 1)
        finally:
            await plc.disconnect()
            await hmi.disconnect()

    asyncio.run(scenario())
    assert all(opc >= mqtt for mqtt, opc in seen_at_result), seen_at_result
    assert rt.opcua.write_timeouts == 0


def test_secure_endpoint_only_when_configured(tmp_path: Path) -> None:
    """Basic256Sha256 Sign&Encrypt only: an unencrypted client is refused, a secure one with a password
    reads; the verdict pushed by the pipeline is what it reads."""
    from types import SimpleNamespace

    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from linewatch.edge.config import OpcUaConfig
    from linewatch.edge.publish.opcua_server import OpcUaServer

    async def certs(name: str, use: Any) -> tuple[Path, Path]:
        key, cert = tmp_path / f"{name}-key.pem", tmp_path / f"{name}-cert.der"
        await setup_self_signed_certificate(
            key, cert, f"urn:linewatch:{name}", "localhost", [use], {"commonName": name}
        )
        return key, cert

    skey, scert = asyncio.run(certs("server", ExtendedKeyUsageOID.SERVER_AUTH))
    ckey, ccert = asyncio.run(certs("client", ExtendedKeyUsageOID.CLIENT_AUTH))
    users = tmp_path / "users"
    users.write_text("plc:operator:s3cret\n")
    url = f"opc.tcp://127.0.0.1:{free_port()}/linewatch/"
    cfg = OpcUaConfig(
        enabled=True, endpoint=url, security_policies=["Basic256Sha256_SignAndEncrypt"],
        certificate=scert, private_key=skey, users_file=users,
    )  # fmt: skip
    cam = SimpleNamespace(name="cam0", gate=None, results=0, anomalies=0, threshold=0.5)
    server = OpcUaServer(cfg, [cam])
    server.start()
    body = {"anomalous": True, "score": 0.9, "frame_id": 7, "regions": [{}], "threshold": 0.5}
    server.verdict(cam, body)

    async def scenario() -> None:
        with pytest.raises(Exception):  # noqa: B017 -- no unencrypted endpoint is offered
            await connect(url, "plc", "s3cret")
        client = Client(url, timeout=10)
        client.application_uri = "urn:linewatch:client"
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{ccert},{ckey}")
        client.set_user("plc")
        client.set_password("s3cret")
        await client.connect()
        try:
            assert await (await var(client, "cam0", "FrameId")).read_value() == 7
            assert await (await var(client, "cam0", "Verdict")).read_value() == "NG"
        finally:
            await client.disconnect()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
