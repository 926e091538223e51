"""Time series: readings and derived room state as points, stored without loss.

``points`` is the data model and line protocol; ``recorder`` turns bus events
into points; ``writer`` batches them off the event loop to the store process
(``store_process``), whose ``workers`` keep them: the durable ``spool`` in front
of InfluxDB (``influx``), and the ``embedded`` SQLite store, which also keeps
the rollups (``rollups``) the reports read with either backend.
"""
