"""Running it: serving and listeners, workers, reload, the admin listener, metrics and logs."""
