"""Helpers for testing orchestrators without storage: history builders and a simulator."""
