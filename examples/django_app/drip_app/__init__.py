"""Drip campaigns for this site's users, run by dripcore (see ``apps.py`` for the wiring)."""
