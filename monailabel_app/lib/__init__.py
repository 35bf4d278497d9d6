"""MedSegDiff MONAI Label app: task configs, infer / train tasks, scoring, strategies and shared helpers."""
