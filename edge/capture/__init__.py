"""Stage 1, capture: one thread per camera reads frames (frame_sources), the typed per-camera record
(camera) and the bounded frame queues with their full policy (queues)."""
