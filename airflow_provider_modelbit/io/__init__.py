"""Readers, writers and encoders for inputs and results."""
