"""Shared test/benchmark fixtures: tiny random models of each supported architecture."""
