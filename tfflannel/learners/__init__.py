"""Base-learner stage: training (patched and global) and batched K-patch inference."""
