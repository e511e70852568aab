"""The scheduled model refresh: new data in, gated and confirmed bundle out, or nothing changes.

Modules, one concern each: `config` (TOML + env), `lock` (one run at a time),
`drop` (what new data there is), `tools` (the trainer/exporter/edge CLIs),
`gate` (may it ship?), `publish` (atomic bundle store, local or over ssh),
`confirm` (did the edge load it? over MQTT), `rollback`, `status`, `runlog`
(one JSON line per run), `pipeline` (the run, step by step), `cli`.
"""
