"""Stage 2, inference: each batch of frames is cut into model inputs, run on a backend and stitched
(frame_scorer, backends/); maps become regions and overlays (postprocess)."""
