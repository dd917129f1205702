"""Appraisal: verified evidence + policy + session binding -> per-device findings and status.

Verification (signatures, chains, revocation) happened before and raised on failure; here every
policy check runs and every failure is collected with the field, the expected and the actual
value, so an operator or auditor sees the whole picture at once.
"""
