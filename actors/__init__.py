"""Ray actors: env workers, inference workers, placement and fault handling (``rlsys.actors``)."""
