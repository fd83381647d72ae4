"""The embedded MuJoCo tabletop suite (registered as env ``tabletop``)."""
