"""HTTP transport of the command layer (docs/http.md).

Only settings.py is imported when [http] is off: the rest imports aiohttp,
which the daemon loads after READY and only when [http] enabled = true.
"""
