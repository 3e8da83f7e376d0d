"""Fan-out/fan-in (Durable Functions pattern 2): run activities in parallel, then aggregate."""
