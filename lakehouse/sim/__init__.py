"""The simulated outside world of the demo (meters, weather provider, customer databases).

Lakehouse code never imports this package; a test enforces it. The lakehouse talks to this world only
through what a real deployment would see: files in an inbox, URLs, database URLs.
"""
