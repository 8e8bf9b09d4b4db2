"""The example project: settings and URLs around the ``drip_app`` application."""
