"""Time series: readings and derived room state as points, stored without loss.

``points`` is the data model and line protocol; ``recorder`` turns bus events
into points; ``writer`` batches them off the event loop into a backend: the
durable ``spool`` in front of InfluxDB (``influx``), or the ``embedded`` SQLite
store, which also keeps the rollups the reports read with either backend.
"""
