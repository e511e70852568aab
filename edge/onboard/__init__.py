"""Onboarding a part on the box from 2-8 good images (few-shot bank, torch-free)."""
