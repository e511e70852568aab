"""Sparkplug B 3.0 payload mode of the edge (``mqtt.payload = "sparkplug"``); needs the [sparkplug] extra.

``sparkplug_b.proto`` is the schema (a subset of Eclipse Tahu's, same field numbers) and
``sparkplug_b_pb2.py`` its protoc output (``make sparkplug-proto``), encoded with Google's protobuf.
"""
