"""Stage 3, publish: payload bodies (payloads), the on-disk outbox written before sending (outbox) and
one MQTT link per camera that delivers it in order (mqtt)."""
