"""Watching every stage: JSON logs with rate-limited repeats (logs), latency windows (stats),
Prometheus and /healthz (telemetry), systemd notify and watchdog (sdnotify)."""
