"""Simulated Bota devices that speak only the device protocol over HTTP (never server internals)."""
