"""Plane geometry: homographies between image pixels and road metres, and calibration files."""
