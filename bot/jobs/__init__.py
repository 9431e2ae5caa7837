"""A job's life: the service that runs jobs, fair scheduling, throttled progress, waiting-time estimates."""
