"""Few-shot PatchCore: an augmented support-set bank per task slot, onboarded on the box."""
