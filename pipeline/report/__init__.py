"""The Sessions report: a page at ``/sessions`` on the gateway and its JSON API.

- :func:`setup_report` - mount it on an aiohttp app (the gateway does).

Modules: :mod:`.api` (routes, handlers, auth), :mod:`.params` (query
parameters, pure), :mod:`.data` (reading sessions through any store with the
query methods), :mod:`.stats` (dashboard numbers, pure), :mod:`.settings`
(``SESSIONIZER_REPORT_*``); the page is ``static/`` (plain HTML, CSS and
JavaScript modules, no build step).
"""

from pipeline.report.api import setup_report

__all__ = ["setup_report"]
