"""Encryption at rest: age v1 and dicomsafe.aes/v1 (see docs/encryption.md, DESIGN.md §7)."""
