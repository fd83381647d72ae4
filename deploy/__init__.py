"""Job entry, cluster configs, Serve app and dashboards (``rlsys.deploy``)."""
