"""Bluetooth OTA tests: the real Bumble host stack over in-process virtual controllers (marker ``ble``)."""
