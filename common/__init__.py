"""Plumbing shared by the four algorithm scripts: data, networks, evaluation, logging."""
