"""Patch stage: lung-centred random patches from the masked-image cache."""
