"""``sessionizer export``: closed sessions into a database table, exactly once.

- :mod:`pipeline.export.sql` the table, its rows and the offsets table, for SQLite
  (stdlib ``sqlite3``) and PostgreSQL (``psycopg``, extra ``[export-postgres]``)
- :mod:`pipeline.export.run` the consumer-group process: batches from
  :class:`pipeline.export.consumer.SessionConsumer`, each written with its offsets in one
  transaction, resuming from those offsets on every assignment
"""

from pipeline.export.sql import SessionTable, open_table

__all__ = ["SessionTable", "open_table"]
